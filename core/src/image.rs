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

/// The status of an image status's Verified condition, if it has one.
pub fn verified_status(status: Option<&GoldenImageStatus>) -> Option<ConditionStatus> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == VERIFIED)
        .map(|c| c.status)
}

/// The GoldenImage an endpoint's spec.image resolves to. A channel resolves to the newest
/// Verified image that lists it in status.channels (or, before the image controller has run,
/// in spec.channels, unverified).
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
    let in_channel = |gi: &&GoldenImage| {
        gi.status
            .as_ref()
            .is_some_and(|s| s.channels.iter().any(|c| c == channel))
            || gi.spec.channels.iter().any(|c| c == channel)
    };
    images
        .iter()
        .filter(in_channel)
        .map(view)
        .max_by(|a, b| (a.verified, a.minimum_build).cmp(&(b.verified, b.minimum_build)))
}
