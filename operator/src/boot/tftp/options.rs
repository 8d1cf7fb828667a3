//! Option negotiation (RFC 2347 OACK, blksize RFC 2348, timeout/tsize RFC 2349, windowsize
//! RFC 7440). Pure: the request's options, the file's size and our limits in, the parameters of
//! the transfer and the OACK to send out.

use std::time::Duration;

use super::packet::{MAX_BLKSIZE, MIN_BLKSIZE, Mode, RawOption};

/// The server's limits for negotiation.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest block size granted; a client asking for more gets this (RFC 2348 lets the server
    /// answer with a smaller value).
    pub max_blksize: u16,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// The window is held in memory for retransmission, so windowsize × blksize is capped too:
    /// a request for 65464 × 65535 would otherwise pin 4 GiB per transfer. 256 KiB still
    /// grants 64 blocks of 4096 or 178 of the usual 1468 (more than max_windowsize).
    pub max_window_bytes: usize,
    /// Retransmission timeout when the client does not ask for one.
    pub default_timeout: Duration,
    /// Largest timeout a client may ask for (RFC 2349 allows up to 255 s). A larger request is
    /// not acknowledged (the RFC does not let a server answer a different value), and the
    /// server's own timeout applies: with 255 s and the retries, one spoofed request would hold
    /// a slot for 25 minutes.
    pub max_client_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            max_window_bytes: 256 << 10,
            default_timeout: Duration::from_secs(1),
            max_client_timeout: Duration::from_secs(10),
        }
    }
}

/// The parameters of one transfer after negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// True when the client asked for a timeout; then it is used as given, without backoff,
    /// because the client sized its own retransmissions to it.
    pub timeout_from_client: bool,
    /// The options to acknowledge, in the client's order; empty means no OACK: the transfer
    /// starts with DATA block 1 (RFC 2347: an OACK only when an option was accepted).
    pub oack: Vec<RawOption>,
}

/// Parses a decimal option value. Leading zeros are fine, signs and spaces are not; values
/// too large for u64 saturate so "larger than our maximum" still clamps instead of failing.
fn decimal(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Negotiates the options of a read request. Unknown, malformed and duplicate options are
/// ignored (RFC 2347: a server ignores options it does not support); the first occurrence of a
/// name wins.
pub fn negotiate(
    options: &[RawOption],
    mode: Mode,
    file_size: Option<u64>,
    limits: &Limits,
) -> Negotiated {
    let max_blksize = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    let mut blksize: Option<u16> = None;
    let mut windowsize: Option<u16> = None;
    let mut timeout: Option<u8> = None;
    let mut tsize = false;
    let mut order: Vec<&'static str> = Vec::new();
    for opt in options {
        let name = opt.name.to_ascii_lowercase();
        let value = decimal(&opt.value);
        match name.as_str() {
            "blksize" if blksize.is_none() => {
                if let Some(v) = value.filter(|&v| v >= u64::from(MIN_BLKSIZE)) {
                    // Clamped below max_blksize so the cast cannot truncate.
                    blksize = Some(v.min(u64::from(max_blksize)) as u16);
                    order.push("blksize");
                }
            }
            "windowsize" if windowsize.is_none() => {
                if let Some(v) = value.filter(|&v| (1..=65535).contains(&v)) {
                    windowsize = Some(v.min(u64::from(limits.max_windowsize.max(1))) as u16);
                    order.push("windowsize");
                }
            }
            "timeout" if timeout.is_none() => {
                let max = limits.max_client_timeout.as_secs().clamp(1, 255);
                if let Some(v) = value.filter(|&v| (1..=max).contains(&v)) {
                    timeout = Some(v as u8);
                    order.push("timeout");
                }
            }
            // The size of a netascii transfer is only known after converting the whole file,
            // so tsize is acknowledged for octet transfers of files whose size is known.
            "tsize" if !tsize && value.is_some() && mode == Mode::Octet && file_size.is_some() => {
                tsize = true;
                order.push("tsize");
            }
            _ => {}
        }
    }
    let blksize_final = blksize.unwrap_or(512);
    let mut window = windowsize.unwrap_or(1);
    let max_blocks = (limits.max_window_bytes / usize::from(blksize_final)).max(1);
    if usize::from(window) > max_blocks {
        window = max_blocks.min(usize::from(u16::MAX)) as u16;
    }
    let oack = order
        .into_iter()
        .map(|name| RawOption {
            name: name.to_string(),
            value: match name {
                "blksize" => blksize_final.to_string(),
                "windowsize" => window.to_string(),
                "timeout" => timeout.unwrap_or(1).to_string(),
                _ => file_size.unwrap_or(0).to_string(),
            },
        })
        .collect();
    Negotiated {
        blksize: blksize_final,
        windowsize: window,
        timeout: timeout
            .map(|t| Duration::from_secs(u64::from(t)))
            .unwrap_or(limits.default_timeout),
        timeout_from_client: timeout.is_some(),
        oack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<RawOption> {
        pairs
            .iter()
            .map(|(n, v)| RawOption {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

    fn oack(n: &Negotiated) -> Vec<(String, String)> {
        n.oack
            .iter()
            .map(|o| (o.name.clone(), o.value.clone()))
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn no_options_means_rfc1350_defaults_and_no_oack() {
        let n = negotiate(&[], Mode::Octet, Some(10), &Limits::default());
        assert_eq!(n.blksize, 512);
        assert_eq!(n.windowsize, 1);
        assert_eq!(n.timeout, Duration::from_secs(1));
        assert!(!n.timeout_from_client);
        assert!(n.oack.is_empty());
    }

    #[test]
    fn all_options_are_acknowledged_in_request_order() {
        let n = negotiate(
            &opts(&[
                ("tsize", "0"),
                ("BLKSIZE", "1468"),
                ("windowsize", "16"),
                ("timeout", "3"),
            ]),
            Mode::Octet,
            Some(123456),
            &Limits::default(),
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert!(n.timeout_from_client);
        assert_eq!(
            oack(&n),
            pairs(&[
                ("tsize", "123456"),
                ("blksize", "1468"),
                ("windowsize", "16"),
                ("timeout", "3")
            ])
        );
    }

    #[test]
    fn blksize_bounds() {
        let l = Limits::default();
        let get = |v: &str| negotiate(&opts(&[("blksize", v)]), Mode::Octet, None, &l);
        assert_eq!(get("8").blksize, 8);
        assert_eq!(get("65464").blksize, 65464);
        // Larger than allowed: answered with our maximum (RFC 2348 lets the server lower it).
        assert_eq!(get("65465").blksize, 65464);
        assert_eq!(get("99999999999999999999999").blksize, 65464);
        // Too small or malformed: ignored, not acknowledged.
        for bad in ["7", "0", "", "-1", "+512", " 512", "512x", "0x200"] {
            let n = get(bad);
            assert_eq!(n.blksize, 512, "{bad:?}");
            assert!(n.oack.is_empty(), "{bad:?}");
        }
        let small = Limits {
            max_blksize: 1024,
            ..Limits::default()
        };
        let n = negotiate(&opts(&[("blksize", "1468")]), Mode::Octet, None, &small);
        assert_eq!(oack(&n), pairs(&[("blksize", "1024")]));
    }

    #[test]
    fn windowsize_is_clamped_by_count_and_memory() {
        let l = Limits::default();
        let n = negotiate(&opts(&[("windowsize", "65535")]), Mode::Octet, None, &l);
        assert_eq!(n.windowsize, 64);
        let n = negotiate(
            &opts(&[("windowsize", "64"), ("blksize", "65464")]),
            Mode::Octet,
            None,
            &l,
        );
        // 256 KiB / 65464 bytes = 4 blocks.
        assert_eq!(n.windowsize, 4);
        assert_eq!(
            oack(&n),
            pairs(&[("windowsize", "4"), ("blksize", "65464")])
        );
        for bad in ["0", "65536", "x", ""] {
            let n = negotiate(&opts(&[("windowsize", bad)]), Mode::Octet, None, &l);
            assert_eq!(n.windowsize, 1, "{bad:?}");
            assert!(n.oack.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn timeout_bounds() {
        let l = Limits::default();
        for (v, ok) in [
            ("1", true),
            ("10", true),
            // Above the cap: not acknowledged, the server's own timeout applies.
            ("11", false),
            ("255", false),
            ("0", false),
            ("256", false),
            ("abc", false),
        ] {
            let n = negotiate(&opts(&[("timeout", v)]), Mode::Octet, None, &l);
            assert_eq!(!n.oack.is_empty(), ok, "{v}");
            assert_eq!(n.timeout_from_client, ok, "{v}");
        }
    }

    #[test]
    fn tsize_only_for_known_octet_sizes() {
        let l = Limits::default();
        let t = opts(&[("tsize", "0")]);
        assert_eq!(
            oack(&negotiate(&t, Mode::Octet, Some(5), &l)),
            pairs(&[("tsize", "5")])
        );
        assert!(negotiate(&t, Mode::Octet, None, &l).oack.is_empty());
        assert!(negotiate(&t, Mode::Netascii, Some(5), &l).oack.is_empty());
        assert!(
            negotiate(&opts(&[("tsize", "x")]), Mode::Octet, Some(5), &l)
                .oack
                .is_empty()
        );
    }

    #[test]
    fn duplicates_and_unknown_options_are_ignored() {
        let n = negotiate(
            &opts(&[
                ("blksize", "1024"),
                ("blksize", "2048"),
                ("multicast", ""),
                ("utimeout", "5"),
            ]),
            Mode::Octet,
            None,
            &Limits::default(),
        );
        assert_eq!(n.blksize, 1024);
        assert_eq!(oack(&n), pairs(&[("blksize", "1024")]));
    }
}
