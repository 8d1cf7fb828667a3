//! A golden image's UEFI boot manager as the API publishes it ([`BootManagerFacts`]: its
//! Authenticode digest and, per signature, the signer, the CA the chain ends at and the
//! chain), and the fleet-level prediction made from it and what an Endpoint's firmware
//! reported ([`FirmwareTrust`]): by certificate names, since the API keeps names. The
//! imaging environment's own check ([`crate::boot_trust::decide`]) verifies keys and is the
//! one that refuses a wipe; this prediction flags an image before a wave uses it.

use recast_crds::endpoint::FirmwareTrust;
pub use recast_crds::golden_image::{BootManagerFacts, BootSignature};

use crate::authenticode::{self, PeError, hex};

/// Where a Windows image keeps its UEFI boot manager (bcdboot's source).
pub const UEFI_BOOT_MANAGER: &str = "Windows/Boot/EFI/bootmgfw.efi";
/// More than any boot manager (Windows 11's is about 2.5 MiB): a bigger file is not read.
pub const MAX_BOOT_MANAGER_BYTES: u64 = 32 << 20;

/// The facts of the boot manager file's bytes (None: the image has none).
pub fn facts_of(bytes: Option<&[u8]>) -> BootManagerFacts {
    let Some(bytes) = bytes else {
        return BootManagerFacts {
            problem: Some(format!(
                "the image has no \\{}: a UEFI machine would find nothing to start",
                UEFI_BOOT_MANAGER.replace('/', "\\")
            )),
            ..Default::default()
        };
    };
    let digest = authenticode::image_digest(bytes).ok().map(|d| hex(&d));
    match authenticode::verify(bytes, &[]) {
        Ok(report) => BootManagerFacts {
            authenticode_sha256: Some(hex(&report.sha256)),
            signatures: report
                .signatures
                .iter()
                .map(|s| {
                    let path: Vec<_> = s.chain.iter().filter(|c| c.on_path).collect();
                    BootSignature {
                        signer: s.signer.clone(),
                        issuer: path
                            .last()
                            .map_or_else(|| s.issuer.clone(), |c| c.issuer.clone()),
                        chain: path.iter().map(|c| c.subject.clone()).collect(),
                    }
                })
                .collect(),
            problem: None,
        },
        Err(PeError::Unsigned) => BootManagerFacts {
            authenticode_sha256: digest,
            signatures: Vec::new(),
            problem: Some(
                "it is unsigned: with Secure Boot on it starts only where db holds its hash".into(),
            ),
        },
        Err(e) => BootManagerFacts {
            authenticode_sha256: digest,
            signatures: Vec::new(),
            problem: Some(format!("it cannot be checked: {e}")),
        },
    }
}

/// The CA a signature is "under", as people name it: the highest CA the signature carries
/// above its signer (Microsoft's boot managers carry "Windows Production PCA 2011" or "Windows
/// UEFI CA 2023"), or the signer's issuer when it carries none.
pub fn ca_of(s: &BootSignature) -> &str {
    match s.chain.as_slice() {
        [_, .., top] => top,
        _ => &s.issuer,
    }
}

/// One line for a person: `signed by "X" under "CA" (chain: "X" <- "CA" <- "Root")`.
pub fn summary(f: &BootManagerFacts) -> String {
    let mut parts: Vec<String> = f
        .signatures
        .iter()
        .map(|s| {
            format!(
                "signed by {:?} under {:?} (chain: {})",
                s.signer,
                ca_of(s),
                s.chain
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .chain(std::iter::once(format!("{:?}", s.issuer)))
                    .collect::<Vec<_>>()
                    .join(" <- ")
            )
        })
        .collect();
    if let Some(p) = &f.problem {
        parts.push(p.clone());
    }
    if let Some(d) = &f.authenticode_sha256 {
        parts.push(format!("Authenticode sha256:{d}"));
    }
    parts.join("; ")
}

/// What the fleet-level prediction says of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// No check will stop it: BIOS or Secure Boot off, or its db names a CA of the chain.
    Boots,
    /// Its db names none of the CAs that start the boot manager (or the file alone is
    /// refused): the imaging environment will refuse to write. Says what is missing.
    Refused(String),
    /// The endpoint has not reported its firmware yet (no imaging run read it).
    Unknown,
}

/// Whether the endpoint's firmware, as it reported it, would start the image's boot manager.
pub fn predict(image: &BootManagerFacts, firmware: Option<&FirmwareTrust>) -> Prediction {
    let Some(fw) = firmware else {
        return Prediction::Unknown;
    };
    // Off: nothing is checked. Unknown is judged as on, as the imaging environment judges it.
    if fw.secure_boot == Some(false) {
        return Prediction::Boots;
    }
    if let Some(problem) = &image.problem {
        return Prediction::Refused(problem.clone());
    }
    let trusted = image.signatures.iter().any(|s| {
        fw.db_certificates
            .iter()
            .any(|c| *c == s.issuer || s.chain.contains(c))
    });
    if trusted {
        return Prediction::Boots;
    }
    let mut needs: Vec<String> = Vec::new();
    for s in &image.signatures {
        let n = format!("{:?}", ca_of(s));
        if !needs.contains(&n) {
            needs.push(n);
        }
    }
    Prediction::Refused(format!(
        "its db lacks {} (it holds {})",
        needs.join(" or "),
        if fw.db_certificates.is_empty() {
            "no certificate".to_string()
        } else {
            fw.db_certificates
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(issuer: &str) -> BootManagerFacts {
        BootManagerFacts {
            authenticode_sha256: Some("ab".into()),
            signatures: vec![BootSignature {
                signer: "Microsoft Windows".into(),
                issuer: issuer.into(),
                chain: vec!["Microsoft Windows".into()],
            }],
            problem: None,
        }
    }

    fn firmware(secure_boot: Option<bool>, db: &[&str]) -> FirmwareTrust {
        FirmwareTrust {
            secure_boot,
            db_certificates: db.iter().map(|s| s.to_string()).collect(),
            read_by_attempt: "k-1".into(),
            read_at: "2026-12-05T10:00:00Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_absent_or_foreign_boot_manager_is_named_so() {
        let absent = facts_of(None);
        assert!(absent.signatures.is_empty() && absent.authenticode_sha256.is_none());
        assert_eq!(
            absent.problem.as_deref(),
            Some(
                "the image has no \\Windows\\Boot\\EFI\\bootmgfw.efi: a UEFI machine would find nothing to start"
            )
        );
        // Bad input: not a PE image at all.
        let text = facts_of(Some(b"not a program"));
        assert!(
            text.problem
                .as_deref()
                .is_some_and(|p| p.starts_with("it cannot be checked: not a PE image")),
            "{text:?}"
        );
        assert!(summary(&text).starts_with("it cannot be checked"));
    }

    #[test]
    fn the_summary_names_signer_ca_and_chain() {
        assert_eq!(
            summary(&image("Windows UEFI CA 2023")),
            "signed by \"Microsoft Windows\" under \"Windows UEFI CA 2023\" (chain: \"Microsoft Windows\" <- \"Windows UEFI CA 2023\"); Authenticode sha256:ab"
        );
    }

    #[test]
    fn a_carried_ca_is_the_one_named() {
        let carried = BootManagerFacts {
            signatures: vec![BootSignature {
                signer: "Microsoft Windows".into(),
                issuer: "Microsoft Root Certificate Authority 2010".into(),
                chain: vec!["Microsoft Windows".into(), "Windows UEFI CA 2023".into()],
            }],
            ..Default::default()
        };
        assert_eq!(
            summary(&carried),
            "signed by \"Microsoft Windows\" under \"Windows UEFI CA 2023\" (chain: \"Microsoft Windows\" <- \"Windows UEFI CA 2023\" <- \"Microsoft Root Certificate Authority 2010\")"
        );
        let old = firmware(Some(true), &["Microsoft Windows Production PCA 2011"]);
        assert_eq!(
            predict(&carried, Some(&old)),
            Prediction::Refused(
                "its db lacks \"Windows UEFI CA 2023\" (it holds \"Microsoft Windows Production PCA 2011\")".into()
            )
        );
        // The root that issued the carried CA, in db, starts it too.
        let root = firmware(Some(true), &["Microsoft Root Certificate Authority 2010"]);
        assert_eq!(predict(&carried, Some(&root)), Prediction::Boots);
    }

    #[test]
    fn the_prediction_follows_the_reported_db() {
        let y2023 = image("Windows UEFI CA 2023");
        let old = firmware(Some(true), &["Microsoft Windows Production PCA 2011"]);
        assert_eq!(
            predict(&y2023, Some(&old)),
            Prediction::Refused(
                "its db lacks \"Windows UEFI CA 2023\" (it holds \"Microsoft Windows Production PCA 2011\")".into()
            )
        );
        let updated = firmware(
            Some(true),
            &[
                "Microsoft Windows Production PCA 2011",
                "Windows UEFI CA 2023",
            ],
        );
        assert_eq!(predict(&y2023, Some(&updated)), Prediction::Boots);
        // A db holding a certificate of the chain itself (not only the issuer) starts it.
        assert_eq!(
            predict(&y2023, Some(&firmware(Some(true), &["Microsoft Windows"]))),
            Prediction::Boots
        );
        // Secure Boot off: nothing is checked. Unknown: judged as on.
        assert_eq!(
            predict(&y2023, Some(&firmware(Some(false), &[]))),
            Prediction::Boots
        );
        assert!(matches!(
            predict(
                &y2023,
                Some(&firmware(None, &["Microsoft Windows Production PCA 2011"]))
            ),
            Prediction::Refused(_)
        ));
        // Not reported yet: no guess.
        assert_eq!(predict(&y2023, None), Prediction::Unknown);
        // An unsigned or absent boot manager is refused wherever Secure Boot is on.
        assert_eq!(
            predict(&facts_of(None), Some(&updated)),
            Prediction::Refused(facts_of(None).problem.unwrap())
        );
        assert_eq!(
            predict(&facts_of(None), Some(&firmware(Some(false), &[]))),
            Prediction::Boots
        );
    }
}
