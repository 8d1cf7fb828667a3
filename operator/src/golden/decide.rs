//! Pure decisions of the GoldenImage controller: whether an image's bytes must be (re)checked,
//! the status a verification produces, and the status facts that follow from the fleet
//! (KnownGood, channels, Ready endpoints). No I/O and no clock reads: `now` is passed in.

use std::time::Duration;

use jiff::Timestamp;
use recast_crds::common::{ConditionStatus, set_condition};
use recast_crds::golden_image::{GoldenImage, GoldenImageStatus};

use recast_core::time;

pub use recast_crds::golden_image::{KNOWN_GOOD_ANNOTATION, KNOWN_GOOD_REASON_ANNOTATION};

/// What the controller must do with an image's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Nothing: the status describes the current spec and the cache holds what it should.
    None,
    /// The spec changed (or was never checked): fetch, verify, then write a new status.
    Verify,
    /// Verified earlier, but this process's artifact store lacks the bytes (a new boot server,
    /// a wiped volume): fetch and verify again to fill the cache, without touching Verified.
    Recache,
}

pub fn is_verified(status: Option<&GoldenImageStatus>) -> bool {
    recast_core::image::verified_status(status) == Some(ConditionStatus::True)
}

/// The digest a verified image is served under: the sha256 recast computed itself.
pub fn served_digest(gi: &GoldenImage) -> Option<&str> {
    let st = gi.status.as_ref()?;
    if !is_verified(Some(st)) {
        return None;
    }
    st.digest.as_deref()
}

/// Whether the status describes the spec as it is now.
pub fn is_current(gi: &GoldenImage) -> bool {
    let observed = gi.status.as_ref().and_then(|s| s.observed_generation);
    observed.is_some() && observed == gi.metadata.generation
}

/// Whether a fetched driver set may be served: its bytes are the spec's (`digest` is what
/// recast computed: the sha256 and whether the file starts like a WIM).
pub fn driver_set_problem(digest: &FileDigest, expected_sha256: &str) -> Result<(), String> {
    if digest.sha256 != expected_sha256 {
        return Err(format!(
            "the file's sha256 is {}, spec.drivers[].sha256 says {expected_sha256}; fix one of them",
            digest.sha256
        ));
    }
    if !digest.is_wim {
        return Err(
            "the file is not a WIM: capture the driver folders with wimlib-imagex capture DIR set.wim (or DISM /Capture-Image)"
                .into(),
        );
    }
    Ok(())
}

/// What recast computed about a fetched file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    pub sha256: String,
    /// It starts with the WIM magic ("MSWIM\0\0\0").
    pub is_wim: bool,
}

/// `cached`: the artifact store holds `images/<served digest>.wim` (and every driver set).
pub fn work(gi: &GoldenImage, cached: bool) -> Work {
    if !is_current(gi) {
        Work::Verify
    } else if served_digest(gi).is_some() && !cached {
        Work::Recache
    } else {
        Work::None
    }
}

/// The status while a new spec is being checked: not Verified (so nothing serves it), the old
/// digest and channels gone, facts kept until the new ones replace them.
pub fn checking(
    gi: &GoldenImage,
    reason: &str,
    message: String,
    now: Timestamp,
) -> GoldenImageStatus {
    let mut st = gi.status.clone().unwrap_or_default();
    st.digest = None;
    st.channels.clear();
    set_condition(
        &mut st.conditions,
        "Verified",
        ConditionStatus::Unknown,
        reason,
        message,
        &time::format(now),
        gi.metadata.generation,
    );
    st
}

/// The status after a verification ran for the current generation.
pub fn checked(
    gi: &GoldenImage,
    verdict: (ConditionStatus, &str, String),
    facts: Option<recast_crds::golden_image::ImageFacts>,
    digest: Option<String>,
    now: Timestamp,
) -> GoldenImageStatus {
    let mut st = gi.status.clone().unwrap_or_default();
    let (status, reason, message) = verdict;
    let verified = status == ConditionStatus::True;
    st.digest = if verified { digest } else { None };
    if facts.is_some() {
        st.facts = facts;
    }
    set_condition(
        &mut st.conditions,
        "Verified",
        status,
        reason,
        message,
        &time::format(now),
        gi.metadata.generation,
    );
    // A definite answer (True or False) settles this generation; Unknown (a fetch or I/O
    // failure, a cancellation) leaves it open so the controller tries again.
    if status != ConditionStatus::Unknown {
        st.observed_generation = gi.metadata.generation;
    }
    st
}

/// One endpoint as the KnownGood rule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointOnImage {
    pub namespace: String,
    pub name: String,
    /// The digest the endpoint was last reimaged onto (status.currentImageDigest).
    pub image_digest: Option<String>,
    /// Since when the Ready condition is True; None when it is not.
    pub ready_since: Option<Timestamp>,
    /// What its firmware trusts, as an imaging environment last read it.
    pub firmware: Option<recast_crds::endpoint::FirmwareTrust>,
}

/// Reads what the KnownGood rule needs from an Endpoint.
pub fn endpoint_on_image(ep: &recast_crds::Endpoint) -> EndpointOnImage {
    let st = ep.status.as_ref();
    EndpointOnImage {
        namespace: recast_crds::namespace_of(&ep.metadata).to_string(),
        name: ep.metadata.name.clone().unwrap_or_default(),
        firmware: st.and_then(|s| s.firmware.clone()),
        image_digest: st.and_then(|s| s.current_image_digest.clone()),
        ready_since: st
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
            })
            .and_then(|c| time::parse(&c.last_transition_time)),
    }
}

/// KnownGood, channels and readyEndpoints for an image, from its status and the endpoints.
/// Only a Verified image serves channels or is KnownGood.
pub fn fleet_facts(
    gi: &GoldenImage,
    endpoints: &[EndpointOnImage],
    now: Timestamp,
) -> GoldenImageStatus {
    let mut st = gi.status.clone().unwrap_or_default();
    let ns = recast_crds::namespace_of(&gi.metadata).to_string();
    let digest = served_digest(gi).map(str::to_string);
    let on_image: Vec<&EndpointOnImage> = endpoints
        .iter()
        .filter(|e| e.namespace == ns && digest.is_some() && e.image_digest == digest)
        .collect();
    st.ready_endpoints = u32::try_from(on_image.iter().filter(|e| e.ready_since.is_some()).count())
        .unwrap_or(u32::MAX);
    let (status, reason, message) = known_good(gi, &on_image, now);
    st.channels = served_channels(gi, digest.is_some(), status == ConditionStatus::True);
    set_condition(
        &mut st.conditions,
        "KnownGood",
        status,
        reason,
        message,
        &time::format(now),
        gi.metadata.generation,
    );
    let in_namespace: Vec<&EndpointOnImage> =
        endpoints.iter().filter(|e| e.namespace == ns).collect();
    let (status, reason, message) = secure_boot_trusted(&st, &in_namespace);
    set_condition(
        &mut st.conditions,
        SECURE_BOOT_TRUSTED,
        status,
        reason,
        message,
        &time::format(now),
        gi.metadata.generation,
    );
    st
}

/// The channels an image serves: none until Verified; then its canaryChannels (the soak);
/// its channels only once KnownGood, so an image that has not proven itself on canaries never
/// reaches the endpoints following "stable".
pub fn served_channels(gi: &GoldenImage, verified: bool, known_good: bool) -> Vec<String> {
    if !verified {
        return Vec::new();
    }
    let mut out = gi.spec.canary_channels.clone();
    if known_good {
        for c in &gi.spec.channels {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    out
}

/// The condition that says whether the endpoints' firmware would start the image's boot
/// manager, as they reported their Secure Boot db (predicted by certificate names; each
/// imaging run checks keys and refuses before any write).
pub const SECURE_BOOT_TRUSTED: &str = "SecureBootTrusted";

/// How many endpoint names a message lists.
const NAMES_SHOWN: usize = 5;

fn secure_boot_trusted(
    st: &GoldenImageStatus,
    endpoints: &[&EndpointOnImage],
) -> (ConditionStatus, &'static str, String) {
    use recast_core::boot_manager::{Prediction, predict, summary};
    let Some(manager) = st.facts.as_ref().and_then(|f| f.boot_manager.as_ref()) else {
        return (
            ConditionStatus::Unknown,
            "NotChecked",
            "the image's boot manager has not been read (the deep check reads it)".into(),
        );
    };
    let mut boots = 0usize;
    let mut refused: Vec<(&str, String)> = Vec::new();
    for e in endpoints {
        match predict(manager, e.firmware.as_ref()) {
            Prediction::Boots => boots += 1,
            Prediction::Refused(why) => refused.push((&e.name, why)),
            Prediction::Unknown => {}
        }
    }
    let reported = boots + refused.len();
    let names = |list: &[(&str, String)]| {
        let mut shown: Vec<String> = list
            .iter()
            .take(NAMES_SHOWN)
            .map(|(n, why)| format!("{n} ({why})"))
            .collect();
        if list.len() > NAMES_SHOWN {
            shown.push(format!("and {} more", list.len() - NAMES_SHOWN));
        }
        shown.join(", ")
    };
    let image = summary(manager);
    match (reported, refused.len()) {
        (0, _) => (
            ConditionStatus::Unknown,
            "NoFirmwareReports",
            format!(
                "no endpoint here has reported its firmware's Secure Boot db yet (an imaging run reads it); boot manager: {image}"
            ),
        ),
        (n, 0) => (
            ConditionStatus::True,
            "Trusted",
            format!(
                "all {n} endpoints that reported their firmware would start its boot manager ({image})"
            ),
        ),
        (n, r) if r == n => (
            ConditionStatus::False,
            "BootsNowhere",
            format!(
                "every endpoint that reported its firmware ({n}) would refuse its boot manager: {}; a reimage onto it is refused on each before any write. Boot manager: {image}",
                names(&refused)
            ),
        ),
        (n, r) => (
            ConditionStatus::True,
            "TrustedBySome",
            format!(
                "{r} of {n} endpoints that reported their firmware would refuse its boot manager: {}; a reimage onto it is refused on those before any write. Boot manager: {image}",
                names(&refused)
            ),
        ),
    }
}

fn known_good(
    gi: &GoldenImage,
    on_image: &[&EndpointOnImage],
    now: Timestamp,
) -> (ConditionStatus, &'static str, String) {
    let name = gi.metadata.name.clone().unwrap_or_default();
    let annotations = gi.metadata.annotations.as_ref();
    let mark = annotations
        .and_then(|a| a.get(KNOWN_GOOD_ANNOTATION))
        .map(String::as_str);
    let why = annotations
        .and_then(|a| a.get(KNOWN_GOOD_REASON_ANNOTATION))
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    if served_digest(gi).is_none() {
        return (
            ConditionStatus::False,
            "NotVerified",
            match mark {
                Some("promoted") => format!(
                    "promoted{why}, but not Verified: an unverified image is never KnownGood"
                ),
                _ => "the image is not Verified".into(),
            },
        );
    }
    match mark {
        Some("promoted") => {
            return (
                ConditionStatus::True,
                "Promoted",
                format!("promoted by hand{why}"),
            );
        }
        Some("demoted") => {
            return (
                ConditionStatus::False,
                "Demoted",
                format!("demoted by hand{why}; `recastctl image promote {name}` undoes it"),
            );
        }
        _ => {}
    }
    let Some(promotion) = &gi.spec.promotion else {
        return (
            ConditionStatus::False,
            "NotPromoted",
            format!(
                "spec.promotion is not set; promote with `recastctl image promote {name} --reason ...`"
            ),
        );
    };
    // Once soaked, an image stays KnownGood: later trouble on one endpoint is that endpoint's
    // story, and demotion is a deliberate act.
    let previous = gi
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "KnownGood"));
    if let Some(p) = previous
        && p.status == ConditionStatus::True
        && p.reason == "Soaked"
    {
        return (ConditionStatus::True, "Soaked", p.message.clone());
    }
    // The CEL rule on spec.promotion.soak guarantees the shape; a value that still does not
    // parse never promotes.
    let Ok(soak) = recast_crds::duration::parse(&promotion.soak) else {
        return (
            ConditionStatus::False,
            "BadSoak",
            format!(
                "spec.promotion.soak {:?} is not a duration such as 24h",
                promotion.soak
            ),
        );
    };
    let soaked = on_image
        .iter()
        .filter(|e| e.ready_since.is_some_and(|t| time::since(now, t) >= soak))
        .count();
    let need = promotion.min_ready_endpoints as usize;
    if soaked >= need {
        (
            ConditionStatus::True,
            "Soaked",
            format!(
                "{soaked} endpoints reimaged onto this image stayed Ready for {}",
                promotion.soak
            ),
        )
    } else {
        (
            ConditionStatus::False,
            "Soaking",
            format!(
                "{soaked} of {need} endpoints reimaged onto this image have stayed Ready for {}; or promote with `recastctl image promote {name}`",
                promotion.soak
            ),
        )
    }
}

/// How long to wait before the next try after `failures` failed fetches or checks in a row:
/// 10 s doubling to at most 10 minutes.
pub fn retry_after(failures: u32) -> Duration {
    let secs = 10u64.saturating_mul(1u64 << failures.min(6).saturating_sub(1));
    Duration::from_secs(secs.min(600))
}

/// Events for what a fleet-facts refresh changed: KnownGood turning, channels moving.
pub fn fleet_notices(
    before: Option<&GoldenImageStatus>,
    after: &GoldenImageStatus,
) -> Vec<recast_core::lifecycle::Notice> {
    use recast_core::lifecycle::{Notice, NoticeType};
    let known_good = |s: Option<&GoldenImageStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "KnownGood"))
            .map(|c| (c.status, c.reason.clone(), c.message.clone()))
    };
    let mut out = Vec::new();
    let (was, now) = (known_good(before), known_good(Some(after)));
    if let Some((status, reason, message)) = &now
        && was.as_ref().map(|w| w.0) != Some(*status)
    {
        match status {
            ConditionStatus::True => out.push(Notice {
                type_: NoticeType::Normal,
                reason: "KnownGood".into(),
                message: format!("KnownGood ({reason}): {message}"),
            }),
            _ if was.as_ref().is_some_and(|w| w.0 == ConditionStatus::True) => out.push(Notice {
                type_: NoticeType::Warning,
                reason: "NoLongerKnownGood".into(),
                message: format!("no longer KnownGood ({reason}): {message}"),
            }),
            _ => {}
        }
    }
    let trusted = |s: Option<&GoldenImageStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == SECURE_BOOT_TRUSTED))
            .map(|c| (c.status, c.message.clone()))
    };
    if let Some((ConditionStatus::False, message)) = trusted(Some(after))
        && trusted(before).map(|t| t.0) != Some(ConditionStatus::False)
    {
        out.push(Notice {
            type_: NoticeType::Warning,
            reason: "BootsNowhere".into(),
            message,
        });
    }
    let before_channels = before.map(|s| s.channels.clone()).unwrap_or_default();
    if before_channels != after.channels {
        out.push(Notice {
            type_: NoticeType::Normal,
            reason: "ChannelsChanged".into(),
            message: if after.channels.is_empty() {
                format!("serves no channel now (was {})", before_channels.join(", "))
            } else {
                format!(
                    "serves channel(s) {}; endpoints following them resolve to this image and report NonCompliant until a wave moves them",
                    after.channels.join(", ")
                )
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_set_is_served_only_as_the_wim_the_spec_names() {
        let sha = "ab".repeat(32);
        let ok = FileDigest {
            sha256: sha.clone(),
            is_wim: true,
        };
        assert_eq!(driver_set_problem(&ok, &sha), Ok(()));
        let other = FileDigest {
            sha256: "cd".repeat(32),
            is_wim: true,
        };
        assert!(
            driver_set_problem(&other, &sha)
                .unwrap_err()
                .contains("sha256 is cdcd")
        );
        let zip = FileDigest {
            sha256: sha.clone(),
            is_wim: false,
        };
        assert!(
            driver_set_problem(&zip, &sha)
                .unwrap_err()
                .contains("not a WIM")
        );
    }
    use recast_crds::common::Condition;
    use recast_crds::golden_image::{
        ArtifactSource, GoldenImageSpec, ImageRequirements, Promotion,
    };

    const SHA: &str = "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011";

    fn at(s: &str) -> Timestamp {
        time::parse(s).unwrap()
    }

    fn image(generation: i64, promotion: Option<(u32, &str)>) -> GoldenImage {
        let mut gi = GoldenImage::new(
            "win11-2026-01",
            GoldenImageSpec {
                drivers: vec![],
                source: ArtifactSource {
                    url: Some("https://images.example/w.wim".into()),
                    path: None,
                },
                sha256: SHA.into(),
                image_index: 1,
                expected: None,
                requirements: ImageRequirements {
                    minimum_build: "26100.7623".into(),
                    required_kbs: vec![],
                },
                channels: vec!["stable".into()],
                canary_channels: vec![],
                promotion: promotion.map(|(n, soak)| Promotion {
                    min_ready_endpoints: n,
                    soak: soak.into(),
                }),
            },
        );
        gi.metadata.namespace = Some("kiosks".into());
        gi.metadata.generation = Some(generation);
        gi
    }

    fn verified(mut gi: GoldenImage, observed: i64) -> GoldenImage {
        let now = at("2026-01-14T07:00:00Z");
        gi.status = Some(checked(
            &gi,
            (ConditionStatus::True, "Verified", "ok".into()),
            None,
            Some(SHA.into()),
            now,
        ));
        gi.status.as_mut().unwrap().observed_generation = Some(observed);
        gi
    }

    fn cond<'a>(st: &'a GoldenImageStatus, t: &str) -> &'a Condition {
        st.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn an_image_whose_boot_manager_no_reported_firmware_trusts_is_flagged() {
        use recast_crds::endpoint::FirmwareTrust;
        use recast_crds::golden_image::{BootManagerFacts, BootSignature, ImageFacts};
        let mut gi = verified(image(1, None), 1);
        let now = at("2026-12-05T10:00:00Z");
        let on = |name: &str, db: &[&str], secure_boot: Option<bool>| EndpointOnImage {
            namespace: "kiosks".into(),
            name: name.into(),
            image_digest: None,
            ready_since: None,
            firmware: Some(FirmwareTrust {
                secure_boot,
                db_certificates: db.iter().map(|s| s.to_string()).collect(),
                read_by_attempt: format!("{name}-1"),
                read_at: "2026-12-05T09:00:00Z".into(),
                ..Default::default()
            }),
        };
        let old = ["Microsoft Windows Production PCA 2011"];
        let new = [
            "Microsoft Windows Production PCA 2011",
            "Windows UEFI CA 2023",
        ];
        // Not read yet (no deep check): Unknown, never a guess.
        let st = fleet_facts(&gi, &[on("a", &old, Some(true))], now);
        assert_eq!(cond(&st, SECURE_BOOT_TRUSTED).reason, "NotChecked");

        gi.status.as_mut().unwrap().facts = Some(ImageFacts {
            boot_manager: Some(BootManagerFacts {
                authenticode_sha256: Some("ab".into()),
                signatures: vec![BootSignature {
                    signer: "Microsoft Windows".into(),
                    issuer: "Windows UEFI CA 2023".into(),
                    chain: vec!["Microsoft Windows".into()],
                }],
                problem: None,
            }),
            ..Default::default()
        });
        // Nobody reported: Unknown.
        let st = fleet_facts(&gi, &[], now);
        assert_eq!(cond(&st, SECURE_BOOT_TRUSTED).reason, "NoFirmwareReports");
        // Every reporting endpoint lacks the 2023 CA: boots nowhere, flagged with a Warning.
        let eps = [on("a", &old, Some(true)), on("b", &old, None)];
        let st = fleet_facts(&gi, &eps, now);
        let c = cond(&st, SECURE_BOOT_TRUSTED);
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, "BootsNowhere")
        );
        assert!(
            c.message
                .contains("a (its db lacks \"Windows UEFI CA 2023\"")
                && c.message
                    .contains("signed by \"Microsoft Windows\" under \"Windows UEFI CA 2023\""),
            "{}",
            c.message
        );
        let notices = fleet_notices(gi.status.as_ref(), &st);
        assert!(
            notices.iter().any(|n| n.reason == "BootsNowhere"),
            "{notices:?}"
        );
        // Said once: the same state again raises no second Warning.
        assert!(
            !fleet_notices(Some(&st), &st)
                .iter()
                .any(|n| n.reason == "BootsNowhere")
        );
        // One machine with the new CA (or with Secure Boot off): trusted by some.
        for other in [on("c", &new, Some(true)), on("c", &[], Some(false))] {
            let st = fleet_facts(&gi, &[eps[0].clone(), other], now);
            let c = cond(&st, SECURE_BOOT_TRUSTED);
            assert_eq!(
                (c.status, c.reason.as_str()),
                (ConditionStatus::True, "TrustedBySome")
            );
            assert!(c.message.starts_with("1 of 2 endpoints"), "{}", c.message);
        }
        // Everyone has it: trusted. Other namespaces do not count.
        let mut elsewhere = on("x", &old, Some(true));
        elsewhere.namespace = "other".into();
        let st = fleet_facts(&gi, &[on("c", &new, Some(true)), elsewhere], now);
        assert_eq!(cond(&st, SECURE_BOOT_TRUSTED).reason, "Trusted");
    }

    fn ready(ns: &str, digest: &str, since: &str) -> EndpointOnImage {
        EndpointOnImage {
            namespace: ns.into(),
            name: format!("ep-{since}"),
            image_digest: Some(digest.into()),
            ready_since: Some(at(since)),
            firmware: None,
        }
    }

    #[test]
    fn work_follows_generation_and_cache() {
        let fresh = image(1, None);
        assert_eq!(work(&fresh, false), Work::Verify, "never checked");
        let v = verified(image(1, None), 1);
        assert_eq!(work(&v, true), Work::None);
        assert_eq!(
            work(&v, false),
            Work::Recache,
            "verified but not in this store"
        );
        let edited = verified(image(2, None), 1);
        assert_eq!(
            work(&edited, true),
            Work::Verify,
            "spec changed since the check"
        );
        // A definite failure settles the generation: no endless re-download of bad bytes.
        let mut bad = image(1, None);
        bad.status = Some(checked(
            &bad,
            (
                ConditionStatus::False,
                "BytesMismatch",
                "sha256 differs".into(),
            ),
            None,
            Some("ff".repeat(32)),
            at("2026-01-14T07:00:00Z"),
        ));
        assert_eq!(work(&bad, false), Work::None);
        assert_eq!(
            served_digest(&bad),
            None,
            "a mismatching digest is never served"
        );
        // A fetch failure leaves it open for a retry.
        let mut flaky = image(1, None);
        flaky.status = Some(checked(
            &flaky,
            (ConditionStatus::Unknown, "FetchFailed", "timeout".into()),
            None,
            None,
            at("2026-01-14T07:00:00Z"),
        ));
        assert_eq!(work(&flaky, false), Work::Verify);
    }

    #[test]
    fn checking_withdraws_the_old_digest_and_channels() {
        let mut edited = verified(image(2, None), 1);
        edited.status.as_mut().unwrap().channels = vec!["stable".into()];
        let st = checking(
            &edited,
            "Checking",
            "fetching".into(),
            at("2026-02-11T07:00:00Z"),
        );
        assert_eq!(st.digest, None);
        assert!(st.channels.is_empty());
        assert_eq!(cond(&st, "Verified").status, ConditionStatus::Unknown);
        assert_eq!(
            cond(&st, "Verified").last_transition_time,
            "2026-02-11T07:00:00Z"
        );
        assert_eq!(
            st.observed_generation,
            Some(1),
            "still the old generation's verdict"
        );
    }

    #[test]
    fn known_good_by_soak_counts_only_this_digest_and_namespace() {
        let mut gi = verified(image(1, Some((2, "24h"))), 1);
        gi.spec.canary_channels = vec!["canary".into()];
        let now = at("2026-01-20T12:00:00Z");
        let eps = vec![
            ready("kiosks", SHA, "2026-01-18T00:00:00Z"),
            ready("kiosks", SHA, "2026-01-20T06:00:00Z"), // Ready for only 6 h
            ready("kiosks", &"ee".repeat(32), "2026-01-01T00:00:00Z"), // another image
            ready("labs", SHA, "2026-01-01T00:00:00Z"),   // another namespace
            EndpointOnImage {
                namespace: "kiosks".into(),
                name: "not-ready".into(),
                image_digest: Some(SHA.into()),
                ready_since: None,
                firmware: None,
            },
        ];
        let st = fleet_facts(&gi, &eps, now);
        let kg = cond(&st, "KnownGood");
        assert_eq!(
            (kg.status, kg.reason.as_str()),
            (ConditionStatus::False, "Soaking")
        );
        assert!(kg.message.starts_with("1 of 2 endpoints"), "{}", kg.message);
        assert_eq!(st.ready_endpoints, 2);
        // Soaking: the canary channel only; "stable" waits for KnownGood.
        assert_eq!(st.channels, vec!["canary"]);
        // Six hours later the second one has soaked too.
        let mut gi2 = gi.clone();
        gi2.status = Some(st);
        let st = fleet_facts(&gi2, &eps, at("2026-01-21T07:00:00Z"));
        let kg = cond(&st, "KnownGood");
        assert_eq!(
            (kg.status, kg.reason.as_str()),
            (ConditionStatus::True, "Soaked")
        );
        assert_eq!(st.channels, vec!["canary", "stable"]);
        // And it stays KnownGood when those endpoints later go away.
        let mut gi3 = gi2.clone();
        gi3.status = Some(st);
        let st = fleet_facts(&gi3, &[], at("2026-01-22T07:00:00Z"));
        assert_eq!(cond(&st, "KnownGood").status, ConditionStatus::True);
        assert_eq!(st.ready_endpoints, 0);
    }

    #[test]
    fn promotion_by_hand_and_its_limits() {
        let now = at("2026-01-20T12:00:00Z");
        let mark = |gi: &mut GoldenImage, how: &str| {
            gi.metadata.annotations = Some(
                [
                    (KNOWN_GOOD_ANNOTATION.to_string(), how.to_string()),
                    (
                        KNOWN_GOOD_REASON_ANNOTATION.to_string(),
                        "canary fleet fine (ops)".to_string(),
                    ),
                ]
                .into(),
            );
        };
        let mut gi = verified(image(1, None), 1);
        let st = fleet_facts(&gi, &[], now);
        assert_eq!(cond(&st, "KnownGood").reason, "NotPromoted");
        mark(&mut gi, "promoted");
        let st = fleet_facts(&gi, &[], now);
        let kg = cond(&st, "KnownGood");
        assert_eq!(
            (kg.status, kg.reason.as_str()),
            (ConditionStatus::True, "Promoted")
        );
        assert!(kg.message.contains("canary fleet fine (ops)"));
        // Demotion wins over a soak that would promote.
        let mut soaked = verified(image(1, Some((1, "1h"))), 1);
        mark(&mut soaked, "demoted");
        let st = fleet_facts(
            &soaked,
            &[ready("kiosks", SHA, "2026-01-01T00:00:00Z")],
            now,
        );
        assert_eq!(cond(&st, "KnownGood").reason, "Demoted");
        // An unverified image is never KnownGood, promoted or not, and serves no channel.
        let mut unverified = image(1, None);
        mark(&mut unverified, "promoted");
        let st = fleet_facts(&unverified, &[], now);
        let kg = cond(&st, "KnownGood");
        assert_eq!(
            (kg.status, kg.reason.as_str()),
            (ConditionStatus::False, "NotVerified")
        );
        assert!(st.channels.is_empty());
    }

    #[test]
    fn notices_say_what_moved() {
        let now = at("2026-01-20T12:00:00Z");
        let gi = verified(image(1, Some((1, "1h"))), 1);
        let before = gi.status.clone().unwrap();
        let after = fleet_facts(&gi, &[ready("kiosks", SHA, "2026-01-01T00:00:00Z")], now);
        let reasons: Vec<String> = fleet_notices(Some(&before), &after)
            .into_iter()
            .map(|n| n.reason)
            .collect();
        assert_eq!(reasons, ["KnownGood", "ChannelsChanged"]);
        assert!(
            fleet_notices(Some(&after), &after).is_empty(),
            "no change, no event"
        );
    }

    #[test]
    fn retries_back_off_to_ten_minutes() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 320, 320, 320]);
    }
}
