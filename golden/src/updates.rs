//! The Windows updates of the incident recast exists for, and the builds they bring, so a
//! verification result can say "contains KB5074109: yes, build 26100.7623".
//!
//! Windows 11 24H2 (build 26100) and 25H2 (26200, an enablement package on the same servicing
//! branch) receive the same cumulative update with the same revision (UBR).
//!
//! A name lookup, not the proof: whether an image contains an update is decided by the build its
//! servicing packages prove is installed (recast_golden::servicing); this table only gives a KB's
//! build when nothing in the image names it, and words for a person.
//!
//! Sources: Microsoft's release notes as quoted by windowsforum.com, windowsnews.ai and
//! malwaretips.com (checked November 2026). Uncertain entries are marked `confirmed: false`
//! and say why; recast never treats such an entry as proof by itself, it only uses it to
//! explain (and to recognise a later cumulative update that supersedes it).

use crate::build::Build;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// Patch Tuesday latest cumulative update (LCU).
    Cumulative,
    /// Out-of-band cumulative update released between Patch Tuesdays.
    OutOfBand,
}

/// One update and the builds it brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    pub kb: &'static str,
    /// Release date (UTC), ISO 8601.
    pub released: &'static str,
    pub kind: UpdateKind,
    /// Builds after installation, one per supported release (24H2, 25H2).
    pub builds: &'static [Build],
    /// Whether the build numbers were confirmed in more than one source.
    pub confirmed: bool,
    pub note: &'static str,
}

/// The updates of the December 2025 – February 2026 incident, oldest first.
pub const UPDATES: &[Update] = &[
    Update {
        kb: "KB5072033",
        released: "2025-12-09",
        kind: UpdateKind::Cumulative,
        builds: &[Build::new(26100, 7462), Build::new(26200, 7462)],
        confirmed: true,
        note: "December 2025 LCU; where it failed and rolled back it left the \"improper state\"",
    },
    Update {
        kb: "KB5074109",
        released: "2026-01-13",
        kind: UpdateKind::Cumulative,
        builds: &[Build::new(26100, 7623), Build::new(26200, 7623)],
        confirmed: true,
        note: "January 2026 LCU; on an improper-state machine it ends in UNMOUNTABLE_BOOT_VOLUME",
    },
    Update {
        kb: "KB5077744",
        released: "2026-01-17",
        kind: UpdateKind::OutOfBand,
        // The KB and date are in several reports; the revision .7627 is from a single
        // secondary source: treat as unconfirmed.
        builds: &[Build::new(26100, 7627), Build::new(26200, 7627)],
        confirmed: false,
        note: "first January out-of-band update (Remote Desktop sign-in fixes)",
    },
    Update {
        kb: "KB5078127",
        released: "2026-01-24",
        kind: UpdateKind::OutOfBand,
        builds: &[Build::new(26100, 7628), Build::new(26200, 7628)],
        confirmed: true,
        note: "second January out-of-band update (cloud-file apps hanging: OneDrive, Dropbox, Outlook)",
    },
    Update {
        kb: "KB5077181",
        released: "2026-02-10",
        kind: UpdateKind::Cumulative,
        builds: &[Build::new(26100, 7840), Build::new(26200, 7840)],
        confirmed: true,
        note: "February 2026 LCU",
    },
];

/// The update with this KB number (case-insensitive, with or without the "KB" prefix).
pub fn by_kb(kb: &str) -> Option<&'static Update> {
    let wanted = normalize_kb(kb)?;
    UPDATES.iter().find(|u| u.kb == wanted)
}

/// The update that brings exactly this build.UBR.
pub fn by_build(build: Build) -> Option<&'static Update> {
    UPDATES.iter().find(|u| u.builds.contains(&build))
}

/// "KB5074109" from "kb5074109" or "5074109"; None when it is not a KB number.
pub fn normalize_kb(kb: &str) -> Option<String> {
    let t = kb.trim();
    let digits = t
        .strip_prefix("KB")
        .or_else(|| t.strip_prefix("kb"))
        .or_else(|| t.strip_prefix("Kb"))
        .or_else(|| t.strip_prefix("kB"))
        .unwrap_or(t);
    (digits.len() >= 6 && digits.len() <= 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("KB{digits}"))
}

/// The servicing branches whose packages a build's image can carry: a 25H2 (26200) image is
/// serviced through the 24H2 (26100) branch, and its RollupFix package may carry either
/// number. (Microsoft does not document which; recast accepts both.)
pub fn servicing_builds(build: u32) -> &'static [u32] {
    match build {
        26200 => &[26200, 26100],
        26100 => &[26100],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_updates_by_kb_and_build() {
        assert_eq!(by_kb("kb5074109").map(|u| u.released), Some("2026-01-13"));
        assert_eq!(by_kb("5077181").map(|u| u.kb), Some("KB5077181"));
        assert_eq!(by_kb("KB1"), None);
        assert_eq!(by_kb("KB5000000"), None);
        assert_eq!(
            by_build(Build::new(26200, 7623)).map(|u| u.kb),
            Some("KB5074109")
        );
        assert_eq!(
            by_build(Build::new(26100, 7462)).map(|u| u.kb),
            Some("KB5072033")
        );
        assert_eq!(by_build(Build::new(26100, 7624)), None);
    }

    #[test]
    fn table_is_ordered_and_consistent() {
        for pair in UPDATES.windows(2) {
            assert!(pair[0].released < pair[1].released);
            assert!(pair[0].builds[0] < pair[1].builds[0]);
        }
        for u in UPDATES {
            assert_eq!(normalize_kb(u.kb).as_deref(), Some(u.kb));
        }
    }

    #[test]
    fn normalizes_kb_numbers() {
        assert_eq!(normalize_kb(" kb5074109 ").as_deref(), Some("KB5074109"));
        assert_eq!(normalize_kb("KB50741x9"), None);
        assert_eq!(normalize_kb("KB"), None);
        assert_eq!(normalize_kb("KB123456789"), None);
    }
}
