//! Which GoldenImage an endpoint gets, and whether an image may be served.

use recast_crds::ConditionStatus;
use recast_crds::golden_image::{GoldenImage, GoldenImageStatus};

use crate::build::Build;
use crate::lifecycle::ImageView;

/// The condition that says recast has checked the image's bytes.
pub const VERIFIED: &str = "Verified";

/// Whether the image's Verified condition is True: recast never serves an image whose bytes it
/// has not checked.
pub fn is_verified(gi: &GoldenImage) -> bool {
    verified_status(gi.status.as_ref()) == Some(ConditionStatus::True)
}

/// The condition that says the image has proven itself (a soak on Ready endpoints, or a
/// person's promotion).
pub const KNOWN_GOOD: &str = "KnownGood";

/// Whether the image's KnownGood condition is True.
pub fn is_known_good(gi: &GoldenImage) -> bool {
    gi.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == KNOWN_GOOD && c.status == ConditionStatus::True)
    })
}

/// The status of an image status's Verified condition, if it has one.
pub fn verified_status(status: Option<&GoldenImageStatus>) -> Option<ConditionStatus> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == VERIFIED)
        .map(|c| c.status)
}

/// The GoldenImage an endpoint's spec.image resolves to. A channel resolves to the newest
/// Verified image that lists it in status.channels: KnownGood for its channels, Verified for
/// its canaryChannels (or, before the image controller has run, to one that names it,
/// unverified, which is never served).
pub fn resolve_image(
    image: &recast_crds::endpoint::ImageRef,
    images: &[GoldenImage],
) -> Option<ImageView> {
    let view = |gi: &GoldenImage| {
        let verified = is_verified(gi);
        ImageView {
            name: gi.metadata.name.clone().unwrap_or_default(),
            digest: gi
                .status
                .as_ref()
                .and_then(|s| s.digest.clone())
                .or_else(|| Some(gi.spec.sha256.clone())),
            verified,
            minimum_build: gi.spec.requirements.minimum_build.parse::<Build>().ok(),
        }
    };
    if let Some(name) = &image.golden_image {
        return images
            .iter()
            .find(|gi| gi.metadata.name.as_deref() == Some(name))
            .map(view);
    }
    let channel = image.channel.as_deref()?;
    // A Verified image serves the channels its status lists (the image controller puts a
    // channel there only once the image is KnownGood, canary channels once it is Verified).
    // An unverified one that names the channel still resolves, so the endpoint says the image
    // is not Verified rather than that nothing resolves; it is never served.
    let in_channel = |gi: &&GoldenImage| {
        let named = gi
            .spec
            .channels
            .iter()
            .chain(&gi.spec.canary_channels)
            .any(|c| c == channel);
        gi.status
            .as_ref()
            .is_some_and(|s| s.channels.iter().any(|c| c == channel))
            || (named && !is_verified(gi))
    };
    images
        .iter()
        .filter(in_channel)
        .map(view)
        .max_by(|a, b| (a.verified, a.minimum_build).cmp(&(b.verified, b.minimum_build)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::common::Condition;
    use recast_crds::endpoint::ImageRef;

    fn image(
        name: &str,
        min: &str,
        verified: bool,
        spec: &[&str],
        canary: &[&str],
        served: &[&str],
    ) -> GoldenImage {
        let mut gi: GoldenImage = serde_json::from_value(serde_json::json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "GoldenImage",
            "metadata": {"name": name, "namespace": "kiosks"},
            "spec": {"source": {"path": "/srv/x.wim"}, "sha256": "ab".repeat(32),
                     "requirements": {"minimumBuild": min},
                     "channels": spec, "canaryChannels": canary}
        }))
        .unwrap();
        gi.status = Some(GoldenImageStatus {
            digest: verified.then(|| "ab".repeat(32)),
            conditions: vec![Condition {
                type_: VERIFIED.into(),
                status: if verified {
                    ConditionStatus::True
                } else {
                    ConditionStatus::Unknown
                },
                reason: "x".into(),
                message: String::new(),
                last_transition_time: "2026-01-14T07:00:00Z".into(),
                observed_generation: None,
            }],
            channels: served.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        });
        gi
    }

    fn channel(c: &str) -> ImageRef {
        ImageRef {
            golden_image: None,
            channel: Some(c.into()),
        }
    }

    #[test]
    fn a_channel_serves_only_what_its_status_lists_so_stable_waits_for_known_good() {
        // January is KnownGood (the controller lists stable); February is Verified, names
        // stable in its spec, and is still soaking: stable stays on January.
        let jan = image("jan", "26100.7623", true, &["stable"], &[], &["stable"]);
        let feb = image(
            "feb",
            "26100.7840",
            true,
            &["stable"],
            &["canary"],
            &["canary"],
        );
        let images = [jan.clone(), feb.clone()];
        let got = resolve_image(&channel("stable"), &images).unwrap();
        assert_eq!(got.name, "jan");
        // The canary channel gets February while it soaks.
        assert_eq!(
            resolve_image(&channel("canary"), &images).unwrap().name,
            "feb"
        );
        // Once February is KnownGood the controller lists stable too: the newest wins.
        let feb_good = image(
            "feb",
            "26100.7840",
            true,
            &["stable"],
            &["canary"],
            &["canary", "stable"],
        );
        let got = resolve_image(&channel("stable"), &[jan.clone(), feb_good]).unwrap();
        assert_eq!(got.name, "feb");
        // Nothing KnownGood in the channel yet, only a soaking image: nothing resolves.
        assert_eq!(
            resolve_image(&channel("stable"), std::slice::from_ref(&feb)),
            None
        );
        // Before the controller has run, an unverified image that names the channel resolves,
        // unverified (the lifecycle refuses to serve it and says why).
        let new = image("mar", "26100.8000", false, &["stable"], &[], &[]);
        let got = resolve_image(&channel("stable"), std::slice::from_ref(&new)).unwrap();
        assert!(!got.verified);
        // A pinned image is a person's choice: it resolves whatever its channels.
        let pinned = ImageRef {
            golden_image: Some("feb".into()),
            channel: None,
        };
        assert_eq!(resolve_image(&pinned, &images).unwrap().name, "feb");
    }
}
