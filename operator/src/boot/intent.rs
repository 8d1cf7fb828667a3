//! What the boot service hands a machine on its next network boot, decided purely from the
//! armed boot intent (if any) and what recast knows about the MAC address.

use serde::{Deserialize, Serialize};

/// An armed network boot for one attempt try of one endpoint. The controller writes it (both
/// backends) when the lifecycle arms the boot and deletes it when the attempt moves on; the boot
/// service only reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootIntent {
    pub namespace: String,
    pub endpoint: String,
    /// Lower-case, colon-separated.
    pub mac_addresses: Vec<String>,
    pub attempt_id: String,
    pub try_number: u32,
    /// GoldenImage name.
    pub image: String,
    /// sha256 of the WIM the imaging environment must apply; never served without one.
    pub image_digest: Option<String>,
    /// "uefi" or "bios".
    pub boot_mode: String,
    pub armed_at: String,
}

/// What recast knows about a MAC address that asks to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// An Endpoint lists this MAC; `wds` when it is handed to the site's WDS server.
    Endpoint {
        namespace: String,
        name: String,
        wds: bool,
    },
    /// More than one Endpoint lists this MAC (a tenant claiming another's machine, or a
    /// copy-paste mistake): it boots nothing from the network, whatever is armed, until one
    /// of them lets go.
    Ambiguous,
    Unknown,
}

/// What to do with a MAC address recast does not manage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownMacPolicy {
    /// Stay silent: another boot server on the network may own it.
    #[default]
    Ignore,
    /// Tell it to boot from its local disk.
    Local,
    /// Boot it locally and record it as a discovered candidate for an Endpoint.
    Discover,
}

/// The boot service's answer for one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootChoice {
    /// No answer at all (a MAC another server owns).
    Ignore,
    /// Boot from the local disk; `discovered` when the MAC should be recorded as a candidate.
    Local { discovered: bool },
    /// The imaging environment for this armed attempt try.
    Imaging(BootIntent),
    /// Refer the machine to the site's WDS server.
    Wds,
}

/// Why an armed intent is not served (logged, and reported as the reason the machine booted
/// locally instead).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotServed {
    #[error(
        "the boot intent for attempt {attempt} has no image digest; an unverified image is never served"
    )]
    NoDigest { attempt: String },
    #[error("the boot intent names endpoint {intent} but the MAC address belongs to {known}")]
    WrongEndpoint { intent: String, known: String },
}

/// Decides what a machine gets: the armed imaging environment only when the intent belongs to
/// the endpoint that owns the MAC and names a verified digest; otherwise the local disk for a
/// known endpoint, and the configured policy for an unknown one.
pub fn choose(
    known: &Known,
    intent: Option<&BootIntent>,
    unknown: UnknownMacPolicy,
) -> (BootChoice, Option<NotServed>) {
    match known {
        // Told to boot its own disk: imaging a machine two Endpoints claim could wipe the
        // wrong tenant's machine, and silence would only delay the same outcome.
        Known::Ambiguous => (BootChoice::Local { discovered: false }, None),
        Known::Unknown => {
            let choice = match unknown {
                UnknownMacPolicy::Ignore => BootChoice::Ignore,
                UnknownMacPolicy::Local => BootChoice::Local { discovered: false },
                UnknownMacPolicy::Discover => BootChoice::Local { discovered: true },
            };
            (choice, None)
        }
        Known::Endpoint {
            namespace,
            name,
            wds,
        } => {
            let Some(intent) = intent else {
                return (BootChoice::Local { discovered: false }, None);
            };
            if &intent.namespace != namespace || &intent.endpoint != name {
                return (
                    BootChoice::Local { discovered: false },
                    Some(NotServed::WrongEndpoint {
                        intent: format!("{}/{}", intent.namespace, intent.endpoint),
                        known: format!("{namespace}/{name}"),
                    }),
                );
            }
            if intent.image_digest.as_deref().is_none_or(str::is_empty) {
                return (
                    BootChoice::Local { discovered: false },
                    Some(NotServed::NoDigest {
                        attempt: intent.attempt_id.clone(),
                    }),
                );
            }
            if *wds {
                return (BootChoice::Wds, None);
            }
            (BootChoice::Imaging(intent.clone()), None)
        }
    }
}

/// Normalises a MAC address to lower-case colon-separated form; None when it is not one.
pub fn normalize_mac(raw: &str) -> Option<String> {
    let hex: String = raw
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    Some(
        lower
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(ns: &str, name: &str, digest: Option<&str>) -> BootIntent {
        BootIntent {
            namespace: ns.into(),
            endpoint: name.into(),
            mac_addresses: vec!["52:54:00:00:00:01".into()],
            attempt_id: "a1".into(),
            try_number: 1,
            image: "win11".into(),
            image_digest: digest.map(str::to_string),
            boot_mode: "uefi".into(),
            armed_at: "2026-01-14T08:00:00Z".into(),
        }
    }

    fn known(wds: bool) -> Known {
        Known::Endpoint {
            namespace: "default".into(),
            name: "kiosk-01".into(),
            wds,
        }
    }

    #[test]
    fn a_known_endpoint_without_an_intent_boots_locally() {
        let (c, why) = choose(&known(false), None, UnknownMacPolicy::Discover);
        assert_eq!(c, BootChoice::Local { discovered: false });
        assert_eq!(why, None);
    }

    #[test]
    fn an_armed_endpoint_with_a_digest_gets_the_imaging_environment() {
        let i = intent("default", "kiosk-01", Some("ab"));
        let (c, why) = choose(&known(false), Some(&i), UnknownMacPolicy::Ignore);
        assert_eq!(c, BootChoice::Imaging(i));
        assert_eq!(why, None);
    }

    #[test]
    fn an_intent_without_a_digest_is_never_served() {
        for digest in [None, Some("")] {
            let i = intent("default", "kiosk-01", digest);
            let (c, why) = choose(&known(false), Some(&i), UnknownMacPolicy::Ignore);
            assert_eq!(c, BootChoice::Local { discovered: false });
            assert!(matches!(why, Some(NotServed::NoDigest { .. })));
        }
    }

    #[test]
    fn an_intent_of_another_endpoint_is_never_served() {
        let i = intent("default", "kiosk-02", Some("ab"));
        let (c, why) = choose(&known(false), Some(&i), UnknownMacPolicy::Ignore);
        assert_eq!(c, BootChoice::Local { discovered: false });
        assert!(matches!(why, Some(NotServed::WrongEndpoint { .. })));
        let i = intent("other", "kiosk-01", Some("ab"));
        assert!(matches!(
            choose(&known(false), Some(&i), UnknownMacPolicy::Ignore).0,
            BootChoice::Local { .. }
        ));
    }

    #[test]
    fn a_wds_endpoint_is_referred_only_when_armed() {
        let i = intent("default", "kiosk-01", Some("ab"));
        assert_eq!(
            choose(&known(true), Some(&i), UnknownMacPolicy::Ignore).0,
            BootChoice::Wds
        );
        assert_eq!(
            choose(&known(true), None, UnknownMacPolicy::Ignore).0,
            BootChoice::Local { discovered: false }
        );
    }

    #[test]
    fn unknown_macs_follow_the_policy() {
        let i = intent("default", "kiosk-01", Some("ab"));
        // An intent for an unknown MAC (a stale row) never images it.
        assert_eq!(
            choose(&Known::Unknown, Some(&i), UnknownMacPolicy::Ignore).0,
            BootChoice::Ignore
        );
        assert_eq!(
            choose(&Known::Unknown, None, UnknownMacPolicy::Local).0,
            BootChoice::Local { discovered: false }
        );
        assert_eq!(
            choose(&Known::Unknown, None, UnknownMacPolicy::Discover).0,
            BootChoice::Local { discovered: true }
        );
    }

    #[test]
    fn an_ambiguous_mac_boots_nothing_even_when_armed() {
        let i = intent("default", "kiosk-01", Some("ab"));
        for policy in [
            UnknownMacPolicy::Ignore,
            UnknownMacPolicy::Local,
            UnknownMacPolicy::Discover,
        ] {
            assert_eq!(
                choose(&Known::Ambiguous, Some(&i), policy),
                (BootChoice::Local { discovered: false }, None)
            );
        }
    }

    #[test]
    fn mac_addresses_normalise() {
        assert_eq!(
            normalize_mac("52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(
            normalize_mac("5254.00ab.cd01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("52:54:00:ab:cd:zz"), None);
        assert_eq!(normalize_mac("../../etc/passwd"), None);
    }
}
