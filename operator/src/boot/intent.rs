//! What the boot service hands a machine on its next network boot, decided purely from the
//! armed boot intent (if any) and what recast knows about the MAC address.

use crate::store::arming::{BootIntent, Known};

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
    /// Refer the machine to the site's WDS server, for this armed try (WDS takes it from
    /// there: the attempt ends handed off).
    Wds(BootIntent),
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
    #[error(
        "the MAC address is listed by several Endpoints ({}); an ambiguous MAC boots nothing: remove it from all but one",
        owners.join(", ")
    )]
    AmbiguousMac { owners: Vec<String> },
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
        Known::Unknown => {
            let choice = match unknown {
                UnknownMacPolicy::Ignore => BootChoice::Ignore,
                UnknownMacPolicy::Local => BootChoice::Local { discovered: false },
                UnknownMacPolicy::Discover => BootChoice::Local { discovered: true },
            };
            (choice, None)
        }
        // Whoever is armed, a MAC two Endpoints claim could be either machine: boot locally
        // (never Ignore, so another boot server cannot take it over either) and say why.
        Known::Ambiguous { owners } => (
            BootChoice::Local { discovered: false },
            Some(NotServed::AmbiguousMac {
                owners: owners.clone(),
            }),
        ),
        Known::Endpoint {
            namespace,
            name,
            wds,
            ..
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
                return (BootChoice::Wds(intent.clone()), None);
            }
            (BootChoice::Imaging(intent.clone()), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The MAC knowledge these cases also cover lives in store::arming.
    use crate::store::arming::{MacConflict, Owner, mac_conflicts, normalize_mac};
    use recast_crds::endpoint::{BootChain, BootMode};

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
            chain: BootChain::Auto,
            mode: BootMode::Uefi,
        }
    }

    fn owner(ns: &str, name: &str, wds: bool) -> Owner {
        Owner {
            namespace: ns.into(),
            name: name.into(),
            wds,
            chain: BootChain::Auto,
            mode: BootMode::Uefi,
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
            BootChoice::Wds(i.clone())
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
    fn an_ambiguous_mac_boots_locally_even_when_armed() {
        let amb = Known::from_owners(vec![
            owner("tenant-b", "thief", false),
            owner("tenant-a", "kiosk-01", false),
        ]);
        assert_eq!(
            amb,
            Known::Ambiguous {
                owners: vec!["tenant-a/kiosk-01".into(), "tenant-b/thief".into()]
            }
        );
        for armed in [
            Some(intent("tenant-a", "kiosk-01", Some("ab"))),
            Some(intent("tenant-b", "thief", Some("ab"))),
            None,
        ] {
            for unknown in [
                UnknownMacPolicy::Ignore,
                UnknownMacPolicy::Local,
                UnknownMacPolicy::Discover,
            ] {
                let (c, why) = choose(&amb, armed.as_ref(), unknown);
                assert_eq!(c, BootChoice::Local { discovered: false });
                assert!(matches!(why, Some(NotServed::AmbiguousMac { .. })));
            }
        }
    }

    #[test]
    fn the_owner_resolves_its_boot_chain_from_the_spec() {
        // As the embedded store reads them: absent fields are the defaults.
        // (spec.bootChain, spec.bootMode) -> the chain with the Linux and the WinPE imaging
        // environment.
        let o = |chain, mode| {
            let k = Known::from_owners(vec![Owner::from_fields(
                "d".into(),
                "e".into(),
                None,
                chain,
                mode,
            )]);
            (k.chain(false), k.chain(true))
        };
        use BootChain::{Ipxe, Signed};
        assert_eq!(o(None, Some("uefi")), (Signed, Ipxe));
        assert_eq!(o(None, Some("bios")), (Ipxe, Ipxe));
        assert_eq!(o(Some("auto"), Some("uefi")), (Signed, Ipxe));
        assert_eq!(o(Some("ipxe"), Some("uefi")), (Ipxe, Ipxe));
        // Asked for explicitly, WinPE sites get it too (Microsoft's boot manager).
        assert_eq!(o(Some("signed"), Some("uefi")), (Signed, Signed));
        // Refused by admission; should one exist, BIOS firmware still gets what boots it.
        assert_eq!(o(Some("signed"), Some("bios")), (Ipxe, Ipxe));
        // A value from a newer writer reads as the default, never as "boot nothing".
        assert_eq!(o(Some("tomorrow"), Some("uefi")), (Signed, Ipxe));
        assert_eq!(o(None, None), (Signed, Ipxe));
        assert!(Owner::from_fields("d".into(), "e".into(), Some("wds"), None, None).wds);
        assert!(!Owner::from_fields("d".into(), "e".into(), Some("recast"), None, None).wds);
        // Known carries the owner's chain.
        let k = Known::from_owners(vec![Owner {
            chain: BootChain::Ipxe,
            ..owner("default", "kiosk-01", false)
        }]);
        assert_eq!(k.chain(false), BootChain::Ipxe);
    }

    #[test]
    fn owners_decide_what_is_known() {
        assert_eq!(Known::from_owners(vec![]), Known::Unknown);
        assert_eq!(
            Known::from_owners(vec![owner("default", "kiosk-01", true)]),
            known(true)
        );
        // The same endpoint seen twice (two of its MACs, or two lists) is one owner.
        assert_eq!(
            Known::from_owners(vec![
                owner("default", "kiosk-01", false),
                owner("default", "kiosk-01", false)
            ]),
            known(false)
        );
    }

    #[test]
    fn mac_conflicts_name_the_other_owner_and_never_the_candidate() {
        let a = vec!["52:54:00:00:00:01".to_string(), "52:54:00:00:00:02".into()];
        let b = vec!["52-54-00-00-00-02".to_string()];
        let c = vec!["52:54:00:00:00:03".to_string()];
        let others = [
            ("tenant-a", "kiosk-01", a.as_slice()),
            ("tenant-b", "other", c.as_slice()),
        ];
        // A new endpoint that lists one of kiosk-01's MACs (in another spelling).
        let got = mac_conflicts(("tenant-b", "thief", &b), others);
        assert_eq!(
            got,
            vec![MacConflict {
                mac: "52:54:00:00:00:02".into(),
                owner: "tenant-a/kiosk-01".into()
            }]
        );
        assert_eq!(
            got[0].to_string(),
            "MAC address 52:54:00:00:00:02 already belongs to Endpoint tenant-a/kiosk-01"
        );
        // Re-applying kiosk-01 itself conflicts with nothing.
        assert!(mac_conflicts(("tenant-a", "kiosk-01", &a), others).is_empty());
        // Same name in another namespace is another endpoint.
        assert_eq!(mac_conflicts(("tenant-c", "kiosk-01", &a), others).len(), 2);
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
