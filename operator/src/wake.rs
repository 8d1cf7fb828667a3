//! Wake-on-LAN: magic packets for a machine that must be imaged, has no BMC and may be powered
//! off. The packet is what every NIC's wake logic looks for: six 0xFF bytes, then the MAC
//! sixteen times, sent as a UDP datagram (port 9, "discard") to a broadcast address so that
//! it reaches a machine that has no IP address.
//!
//! Two destinations by default, because sites differ: the limited broadcast 255.255.255.255
//! leaves on the provisioning interface only (the socket is bound to it), and the
//! interface's subnet-directed broadcast (e.g. 10.40.0.255) which a router with directed
//! broadcast forwarding can carry to another subnet. Each is sent a few times, a second
//! apart: a switch that has aged out the port's MAC floods the first packet, and a NIC in a
//! deep sleep state can miss one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use recast_core::lifecycle::ActionError;

/// The UDP port magic packets go to (the discard service; NICs do not look at the port).
pub const PORT: u16 = 9;
/// How often each destination is sent the packet.
pub const REPEATS: u32 = 3;
/// The gap between repeats.
pub const GAP: Duration = Duration::from_secs(1);

/// The magic packet for `mac` ("52:54:00:a1:00:01" or with dashes): 102 bytes.
pub fn magic_packet(mac: &str) -> Result<[u8; 102], String> {
    let bytes = parse_mac(mac)?;
    let mut p = [0xFFu8; 102];
    for i in 0..16 {
        p[6 + i * 6..12 + i * 6].copy_from_slice(&bytes);
    }
    Ok(p)
}

fn parse_mac(mac: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    let bad = || format!("{mac:?} is not a MAC address (six hex pairs, such as 52:54:00:a1:00:01)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The subnet-directed broadcast of an address and prefix (10.40.0.7/24 → 10.40.0.255); none
/// for /31 and /32, which have no broadcast address.
pub fn directed_broadcast(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    if prefix >= 31 {
        return None;
    }
    let host_bits = u32::MAX >> prefix;
    Some(Ipv4Addr::from(u32::from(addr) | host_bits))
}

/// Where and how the operator sends magic packets (`--wake-on-lan-*`). The default is off: a
/// controller built without the operator's flags (a test, a library user) never broadcasts on
/// whatever network it runs on.
#[derive(Clone, Debug)]
pub struct WakeConfig {
    /// The provisioning interface: the socket is bound to it, and its IPv4 subnets give the
    /// directed broadcasts. None: the host's routing decides (limited broadcast only).
    pub interface: Option<String>,
    /// Extra destinations (a relay's address, another subnet's broadcast).
    pub extra_targets: Vec<SocketAddrV4>,
    /// Off: the action fails, and the lifecycle asks a person instead.
    pub disabled: bool,
}

impl Default for WakeConfig {
    fn default() -> Self {
        WakeConfig {
            interface: None,
            extra_targets: Vec::new(),
            disabled: true,
        }
    }
}

impl WakeConfig {
    /// The destinations: the limited broadcast, the directed broadcast of each IPv4 address
    /// on the interface, then the extra targets.
    pub fn targets(&self) -> Result<Vec<SocketAddrV4>, String> {
        let mut out = vec![SocketAddrV4::new(Ipv4Addr::BROADCAST, PORT)];
        if let Some(ifname) = &self.interface {
            let addrs = interface_ipv4(ifname)?;
            if addrs.is_empty() {
                return Err(format!(
                    "interface {ifname} has no IPv4 address: check --wake-on-lan-interface"
                ));
            }
            for (addr, prefix) in addrs {
                if let Some(b) = directed_broadcast(addr, prefix) {
                    out.push(SocketAddrV4::new(b, PORT));
                }
            }
        }
        out.extend(self.extra_targets.iter().copied());
        out.dedup();
        Ok(out)
    }

    /// Sends the packets for `macs`; returns what was sent, for the event.
    pub async fn wake(&self, macs: &[String]) -> Result<String, ActionError> {
        let fail = |message: String| ActionError {
            permanent: false,
            message,
        };
        if self.disabled {
            return Err(fail(
                "Wake-on-LAN is off on this operator (--wake-on-lan off)".into(),
            ));
        }
        let packets = macs
            .iter()
            .map(|m| magic_packet(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let targets = self.targets().map_err(fail)?;
        let sock = bind(self.interface.as_deref()).map_err(fail)?;
        let mut sent = 0u32;
        let mut last_error = None;
        for round in 0..REPEATS {
            if round > 0 {
                tokio::time::sleep(GAP).await;
            }
            for p in &packets {
                for t in &targets {
                    match sock.send_to(p, SocketAddr::V4(*t)).await {
                        Ok(_) => sent += 1,
                        Err(e) => last_error = Some(format!("to {t}: {e}")),
                    }
                }
            }
        }
        if sent == 0 {
            return Err(fail(format!(
                "no magic packet could be sent ({})",
                last_error.unwrap_or_default()
            )));
        }
        let via = self
            .interface
            .as_deref()
            .map(|i| format!(" on {i}"))
            .unwrap_or_default();
        Ok(format!(
            "sent Wake-on-LAN for {} to {}{via}, {REPEATS} times; waiting for the machine to network-boot (if it is on but hung, restart it by hand)",
            macs.join(", "),
            targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }
}

fn bind(interface: Option<&str>) -> Result<tokio::net::UdpSocket, String> {
    let err = |e: std::io::Error| format!("cannot open a broadcast socket: {e}");
    let std = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(err)?;
    std.set_broadcast(true).map_err(err)?;
    std.set_nonblocking(true).map_err(err)?;
    let sock = tokio::net::UdpSocket::from_std(std).map_err(err)?;
    if let Some(ifname) = interface {
        // Binding to the interface is what makes 255.255.255.255 leave there and nowhere else
        // (needs CAP_NET_RAW, like the DHCP listener).
        sock.bind_device(Some(ifname.as_bytes())).map_err(|e| {
            format!("cannot send on interface {ifname}: {e} (needs root or CAP_NET_RAW)")
        })?;
    }
    Ok(sock)
}

/// The IPv4 addresses and prefix lengths of an interface.
fn interface_ipv4(ifname: &str) -> Result<Vec<(Ipv4Addr, u8)>, String> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list the host's interfaces: {e}"))?;
    let mut out = Vec::new();
    let mut seen = false;
    for a in addrs.filter(|a| a.interface_name == ifname) {
        seen = true;
        let (Some(addr), Some(mask)) = (
            a.address.as_ref().and_then(|s| s.as_sockaddr_in()),
            a.netmask.as_ref().and_then(|s| s.as_sockaddr_in()),
        ) else {
            continue;
        };
        let prefix = u32::from(mask.ip()).leading_ones() as u8;
        out.push((addr.ip(), prefix));
    }
    if !seen {
        return Err(format!(
            "no interface named {ifname} on this host: check --wake-on-lan-interface"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_is_six_ff_then_sixteen_macs() {
        let p = magic_packet("52:54:00:A1:00:01").unwrap();
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(
                &p[6 + i * 6..12 + i * 6],
                &[0x52, 0x54, 0x00, 0xa1, 0x00, 0x01]
            );
        }
        assert_eq!(magic_packet("52-54-00-a1-00-01").unwrap(), p);
    }

    #[test]
    fn a_bad_mac_is_an_error_naming_it() {
        for bad in [
            "",
            "52:54:00:a1:00",
            "52:54:00:a1:00:zz",
            "525400a10001",
            "5:54:00:a1:00:01:",
        ] {
            let e = magic_packet(bad).unwrap_err();
            assert!(e.contains("not a MAC address"), "{bad}: {e}");
        }
    }

    #[test]
    fn directed_broadcasts() {
        let a: Ipv4Addr = "10.40.0.7".parse().unwrap();
        assert_eq!(
            directed_broadcast(a, 24),
            Some("10.40.0.255".parse().unwrap())
        );
        assert_eq!(
            directed_broadcast(a, 16),
            Some("10.40.255.255".parse().unwrap())
        );
        assert_eq!(
            directed_broadcast(a, 30),
            Some("10.40.0.7".parse().unwrap())
        );
        assert_eq!(directed_broadcast(a, 31), None);
        assert_eq!(directed_broadcast(a, 32), None);
        assert_eq!(directed_broadcast(a, 0), Some(Ipv4Addr::BROADCAST));
    }

    #[tokio::test]
    async fn disabled_or_misconfigured_says_what_to_fix() {
        let off = WakeConfig::default();
        let e = off.wake(&["52:54:00:a1:00:01".into()]).await.unwrap_err();
        assert!(e.message.contains("--wake-on-lan off"), "{}", e.message);
        let missing = WakeConfig {
            interface: Some("recast-no-such0".into()),
            extra_targets: vec![],
            disabled: false,
        };
        let e = missing
            .wake(&["52:54:00:a1:00:01".into()])
            .await
            .unwrap_err();
        assert!(
            e.message.contains("no interface named recast-no-such0"),
            "{}",
            e.message
        );
        let on = WakeConfig {
            disabled: false,
            ..Default::default()
        };
        let e = on.wake(&["nonsense".into()]).await.unwrap_err();
        assert!(e.message.contains("not a MAC address"), "{}", e.message);
    }
}
