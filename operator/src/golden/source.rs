//! Where a GoldenImage's bytes may come from: the pure decisions behind `spec.source`.
//!
//! A GoldenImage is written by whoever may write GoldenImages (a tenant namespace on the
//! Kubernetes backend), but the fetch runs as the operator: in a host-network pod that can
//! read the imaging key, the service-account token and the BMC passwords, and can reach
//! loopback, the cloud metadata service and the cluster's own services. So a source is
//! confined:
//!
//! - `source.path` only under an `--image-source-root` (none by default), judged on the real
//!   path after symlinks and `..` are resolved ([`confined`]);
//! - `source.url` never to loopback, link-local (cloud metadata at 169.254.169.254),
//!   unspecified, multicast, broadcast or reserved addresses, nor to the ranges given with
//!   `--image-source-deny-cidr` (the cluster's pod and service ranges), unless an
//!   `--image-source-allow-cidr` covers the address more specifically ([`check_address`]).
//!   RFC 1918 and IPv6 unique-local addresses stay allowed: a site's image server usually has
//!   one. The check runs on the addresses the connection goes to, not on the host name.
//! - no redirects unless `--image-source-allow-redirects`;
//! - a size limit and an overall deadline per fetch.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// No golden WIM we know of is this large; the default of `--image-max-bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
/// The default of `--image-fetch-timeout`: 64 GiB at 25 Mbit/s, a slow WAN link, is ~6 h.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// What `spec.source` may reach. Built once at start from the flags.
#[derive(Clone, Debug)]
pub struct SourcePolicy {
    /// Canonical directories `source.path` may name files under. Empty: no path is accepted.
    pub path_roots: Vec<PathBuf>,
    /// Follow HTTP redirects (each hop's addresses are checked like the first).
    pub allow_redirects: bool,
    /// Ranges fetched from even though a built-in or `deny` range covers them.
    pub allow: Vec<IpNet>,
    /// Ranges refused on top of the built-in ones (the cluster's pod and service CIDRs).
    pub deny: Vec<IpNet>,
    pub max_bytes: u64,
    pub deadline: Duration,
}

impl Default for SourcePolicy {
    fn default() -> Self {
        SourcePolicy {
            path_roots: Vec::new(),
            allow_redirects: false,
            allow: Vec::new(),
            deny: Vec::new(),
            max_bytes: DEFAULT_MAX_BYTES,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// Why an address is refused without a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    LinkLocal,
    Unspecified,
    Multicast,
    Broadcast,
    Reserved,
    /// A cloud metadata service outside link-local (Alibaba's 100.100.100.200, AWS's IPv6
    /// fd00:ec2::254).
    Metadata,
    /// One of `--image-source-deny-cidr`.
    Denied,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Loopback => "a loopback address",
            AddressClass::LinkLocal => "a link-local address (where cloud metadata services live)",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Reserved => "a reserved address",
            AddressClass::Metadata => "a cloud metadata service address",
            AddressClass::Denied => "in a range given with --image-source-deny-cidr",
        })
    }
}

/// The ranges refused without a flag, each with why.
fn builtin_refusals() -> &'static [(IpNet, AddressClass)] {
    use std::sync::OnceLock;
    static LIST: OnceLock<Vec<(IpNet, AddressClass)>> = OnceLock::new();
    LIST.get_or_init(|| {
        let v4 = |a, b, c, d, len| {
            IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len).expect("valid built-in range"),
            )
        };
        let v6 = |s: &str, len| {
            IpNet::V6(
                ipnet::Ipv6Net::new(s.parse().expect("valid built-in address"), len)
                    .expect("valid built-in range"),
            )
        };
        vec![
            (v4(0, 0, 0, 0, 8), AddressClass::Unspecified),
            (v4(127, 0, 0, 0, 8), AddressClass::Loopback),
            (v4(169, 254, 0, 0, 16), AddressClass::LinkLocal),
            (v4(100, 100, 100, 200, 32), AddressClass::Metadata),
            (v4(224, 0, 0, 0, 4), AddressClass::Multicast),
            (v4(240, 0, 0, 0, 4), AddressClass::Reserved),
            (v4(255, 255, 255, 255, 32), AddressClass::Broadcast),
            (v6("::", 128), AddressClass::Unspecified),
            (v6("::1", 128), AddressClass::Loopback),
            (v6("fe80::", 10), AddressClass::LinkLocal),
            (v6("fd00:ec2::254", 128), AddressClass::Metadata),
            (v6("ff00::", 8), AddressClass::Multicast),
        ]
    })
}

/// An address the fetch will not connect to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{addr} is {class}; image sources may not point there (a GoldenImage could otherwise read the operator's own services or cloud credentials). If this really is your image server, allow it with --image-source-allow-cidr {addr}/{host_len}"
)]
pub struct AddressRefused {
    pub addr: IpAddr,
    pub class: AddressClass,
    host_len: u8,
}

/// IPv4 written as IPv6 (`::ffff:127.0.0.1`) is judged as the IPv4 address it carries.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Whether the fetch may connect to `ip`. The longest matching prefix decides between the
/// refused ranges (built-in and `deny`) and `allow`; an allow entry wins a tie, so
/// `--image-source-allow-cidr 127.0.0.1/32` opens exactly one loopback address.
pub fn check_address(ip: IpAddr, policy: &SourcePolicy) -> Result<(), AddressRefused> {
    let ip = normalize(ip);
    let refused = builtin_refusals()
        .iter()
        .copied()
        .chain(policy.deny.iter().map(|n| (*n, AddressClass::Denied)))
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len());
    let Some((net, class)) = refused else {
        return Ok(());
    };
    let allowed = policy
        .allow
        .iter()
        .filter(|n| n.contains(&ip))
        .map(|n| n.prefix_len())
        .max();
    if allowed.is_some_and(|len| len >= net.prefix_len()) {
        return Ok(());
    }
    Err(AddressRefused {
        addr: ip,
        class,
        host_len: if ip.is_ipv4() { 32 } else { 128 },
    })
}

/// Picks the addresses a name resolved to that the fetch may use. All refused: the first
/// refusal, to say why.
pub fn usable_addresses(
    resolved: &[IpAddr],
    policy: &SourcePolicy,
) -> Result<Vec<IpAddr>, AddressRefused> {
    let mut first_refusal = None;
    let mut ok = Vec::new();
    for ip in resolved {
        match check_address(*ip, policy) {
            Ok(()) => ok.push(*ip),
            Err(e) => {
                first_refusal.get_or_insert(e);
            }
        }
    }
    match (ok.is_empty(), first_refusal) {
        (true, Some(e)) => Err(e),
        _ => Ok(ok),
    }
}

/// Whether a real (canonical) path lies under one of the canonical roots. Component-wise:
/// `/srv/images2/x` is not under `/srv/images`.
pub fn confined(real: &Path, roots: &[PathBuf]) -> bool {
    real.is_absolute() && roots.iter().any(|r| real.starts_with(r))
}

/// Why a `source.path` or `source.url` is refused before anything is read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceRefused {
    #[error(
        "spec.source.path {path} is refused: this operator reads local image files only under directories given with --image-source-root, and none is set; start it with --image-source-root DIR (the directory holding your WIMs) or serve the WIM over HTTP and use spec.source.url"
    )]
    NoRoots { path: String },
    #[error(
        "spec.source.path {path} is refused: it resolves to {real}, which is outside every --image-source-root ({roots}); put the WIM under one of them (symlinks and '..' are resolved before the check)"
    )]
    OutsideRoots {
        path: String,
        real: String,
        roots: String,
    },
    #[error("{url}: {refused}")]
    Address {
        url: String,
        refused: AddressRefused,
    },
    #[error(
        "{url} redirects to {to}; redirects are refused unless the operator runs with --image-source-allow-redirects (or point spec.source.url at the final location)"
    )]
    Redirect { url: String, to: String },
    #[error("{url}: only http:// and https:// image sources are fetched")]
    Scheme { url: String },
}

impl SourcePolicy {
    /// Decides on a local path whose real location (symlinks and `..` resolved) is `real`.
    pub fn check_path(&self, path: &str, real: &Path) -> Result<(), SourceRefused> {
        if self.path_roots.is_empty() {
            return Err(SourceRefused::NoRoots { path: path.into() });
        }
        if confined(real, &self.path_roots) {
            return Ok(());
        }
        Err(SourceRefused::OutsideRoots {
            path: path.into(),
            real: real.display().to_string(),
            roots: self
                .path_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// The host of a URL as an IP address, when it is written as one (`[::1]` included).
pub fn literal_host(url: &reqwest::Url) -> Option<IpAddr> {
    // The URL parser has already turned numeric spellings (2130706433, 0x7f.1) into dotted
    // IPv4, and writes IPv6 in brackets.
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Decides on a URL before any connection: the scheme, and the host when it is an address.
/// Host names are decided at connect time, on what they resolve to.
pub fn check_url(url: &reqwest::Url, policy: &SourcePolicy) -> Result<(), SourceRefused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SourceRefused::Scheme {
            url: url.to_string(),
        });
    }
    if let Some(ip) = literal_host(url) {
        check_address(ip, policy).map_err(|refused| SourceRefused::Address {
            url: url.to_string(),
            refused,
        })?;
    }
    Ok(())
}

/// Parses a byte count such as `68719476736`, `64Gi`, `500Mi` or `1T` (binary multiples;
/// `G` and `Gi` both mean 2^30).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 64Gi or 500Mi"))?;
    let shift = match unit.strip_suffix('B').unwrap_or(unit).trim_end_matches('i') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?} is not a size such as 64Gi or 500Mi")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a CIDR (`10.96.0.0/12`, `fd00::/8`) or a single address (a host route).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        // 10.96.0.1/12 means the network; keep what the operator meant, not the typo.
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not a CIDR such as 10.96.0.0/12 or an address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SourcePolicy {
        SourcePolicy::default()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refused_classes_without_flags() {
        let p = policy();
        for (addr, class) in [
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.255.254", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("169.254.0.1", AddressClass::LinkLocal),
            ("::ffff:169.254.169.254", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("febf::1", AddressClass::LinkLocal),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("::", AddressClass::Unspecified),
            ("224.0.0.1", AddressClass::Multicast),
            ("239.255.255.250", AddressClass::Multicast),
            ("ff02::1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Broadcast),
            ("240.0.0.1", AddressClass::Reserved),
            ("100.100.100.200", AddressClass::Metadata),
            ("fd00:ec2::254", AddressClass::Metadata),
        ] {
            let e = check_address(ip(addr), &p).unwrap_err();
            assert_eq!(e.class, class, "{addr}");
            assert!(
                e.to_string().contains("--image-source-allow-cidr"),
                "names the flag: {e}"
            );
        }
    }

    #[test]
    fn a_sites_usual_image_servers_are_allowed_by_default() {
        let p = policy();
        for addr in [
            "10.0.40.2",
            "172.16.0.9",
            "172.31.255.1",
            "192.168.1.10",
            "100.64.0.1",
            "100.100.100.199",
            "8.8.8.8",
            "fd12:3456::10",
            "fd00:ec2::253",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "169.255.0.1",
            "223.255.255.255",
            "fec0::1",
        ] {
            assert_eq!(check_address(ip(addr), &p), Ok(()), "{addr}");
        }
    }

    #[test]
    fn deny_ranges_refuse_cluster_addresses_and_longest_prefix_decides() {
        let mut p = policy();
        p.deny = vec![
            parse_cidr("10.96.0.0/12").unwrap(),
            parse_cidr("10.244.0.0/16").unwrap(),
        ];
        for addr in ["10.96.0.1", "10.111.255.255", "10.244.3.7"] {
            let e = check_address(ip(addr), &p).unwrap_err();
            assert_eq!(e.class, AddressClass::Denied, "{addr}");
        }
        assert_eq!(check_address(ip("10.0.40.2"), &p), Ok(()));
        assert_eq!(check_address(ip("10.112.0.1"), &p), Ok(()));
        // A broad allow does not undo a narrower deny...
        p.allow = vec![parse_cidr("10.0.0.0/8").unwrap()];
        assert!(check_address(ip("10.244.3.7"), &p).is_err());
        // ...a narrower allow does, and only for what it covers.
        p.allow.push(parse_cidr("10.244.3.0/24").unwrap());
        assert_eq!(check_address(ip("10.244.3.7"), &p), Ok(()));
        assert!(check_address(ip("10.244.4.7"), &p).is_err());
    }

    #[test]
    fn an_allow_entry_opens_exactly_what_it_covers() {
        let mut p = policy();
        p.allow = vec![parse_cidr("127.0.0.2").unwrap()];
        assert_eq!(check_address(ip("127.0.0.2"), &p), Ok(()));
        assert_eq!(check_address(ip("::ffff:127.0.0.2"), &p), Ok(()));
        assert!(check_address(ip("127.0.0.1"), &p).is_err());
        // A tie goes to the allow entry.
        p.allow = vec![parse_cidr("169.254.0.0/16").unwrap()];
        assert_eq!(check_address(ip("169.254.169.254"), &p), Ok(()));
        // A wide allow (0.0.0.0/0) is shorter than every built-in range: it opens nothing.
        p.allow = vec![parse_cidr("0.0.0.0/0").unwrap()];
        assert!(check_address(ip("127.0.0.1"), &p).is_err());
        assert!(check_address(ip("169.254.169.254"), &p).is_err());
    }

    #[test]
    fn resolved_names_keep_only_usable_addresses() {
        let p = policy();
        // DNS rebinding or a dual answer: only the checked address is used.
        assert_eq!(
            usable_addresses(&[ip("127.0.0.1"), ip("10.0.0.5")], &p),
            Ok(vec![ip("10.0.0.5")])
        );
        let e = usable_addresses(&[ip("169.254.169.254"), ip("::1")], &p).unwrap_err();
        assert_eq!(e.class, AddressClass::LinkLocal);
        assert_eq!(usable_addresses(&[], &p), Ok(vec![]));
    }

    #[test]
    fn urls_are_checked_before_any_connection() {
        let p = policy();
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        for bad in [
            "http://127.0.0.1:8080/x.wim",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/x.wim",
            "http://[::ffff:7f00:1]/x.wim",
            "http://0.0.0.0/x.wim",
            // Legacy spellings the URL parser normalises to 127.0.0.1.
            "http://2130706433/x.wim",
            "http://0x7f.1/x.wim",
        ] {
            assert!(
                matches!(check_url(&u(bad), &p), Err(SourceRefused::Address { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            check_url(&u("file:///etc/shadow"), &p),
            Err(SourceRefused::Scheme { .. })
        ));
        assert!(matches!(
            check_url(&u("ftp://10.0.0.1/x.wim"), &p),
            Err(SourceRefused::Scheme { .. })
        ));
        for good in [
            "http://10.0.40.2/x.wim",
            "https://images.example.internal/x.wim",
            "http://localhost/x.wim",
        ] {
            // Names are judged on what they resolve to, at connect time.
            assert_eq!(check_url(&u(good), &p), Ok(()), "{good}");
        }
    }

    #[test]
    fn paths_are_confined_to_the_roots_component_wise() {
        let roots = vec![PathBuf::from("/srv/images"), PathBuf::from("/mnt/wims")];
        for ok in [
            "/srv/images/a.wim",
            "/srv/images/sub/dir/b.wim",
            "/mnt/wims/c.wim",
            "/srv/images",
        ] {
            assert!(confined(Path::new(ok), &roots), "{ok}");
        }
        for bad in [
            "/srv/images2/a.wim",
            "/srv/image",
            "/srv",
            "/etc/shadow",
            "/var/lib/recast/imaging.key",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "srv/images/a.wim",
            "/mnt/wimsX/c.wim",
        ] {
            assert!(!confined(Path::new(bad), &roots), "{bad}");
        }
        assert!(!confined(Path::new("/srv/images/a.wim"), &[]));
    }

    #[test]
    fn path_refusals_name_the_flag() {
        let mut p = policy();
        let e = p
            .check_path("/etc/shadow", Path::new("/etc/shadow"))
            .unwrap_err();
        assert!(matches!(e, SourceRefused::NoRoots { .. }));
        assert!(e.to_string().contains("--image-source-root"), "{e}");
        p.path_roots = vec![PathBuf::from("/srv/images")];
        let e = p
            .check_path(
                "/srv/images/link.wim",
                Path::new("/var/lib/recast/imaging.key"),
            )
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/var/lib/recast/imaging.key") && msg.contains("/srv/images"),
            "{msg}"
        );
        assert_eq!(
            p.check_path("/srv/images/a.wim", Path::new("/srv/images/a.wim")),
            Ok(())
        );
    }

    #[test]
    fn sizes_and_cidrs_parse() {
        assert_eq!(parse_size("64Gi"), Ok(64 << 30));
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert_eq!(parse_size("500Mi"), Ok(500 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        for bad in ["", "Gi", "12Q", "-1", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_cidr("10.96.0.1/12").unwrap().to_string(),
            "10.96.0.0/12"
        );
        assert_eq!(parse_cidr("127.0.0.2").unwrap().to_string(), "127.0.0.2/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", ""] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}
