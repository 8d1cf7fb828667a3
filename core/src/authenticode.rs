//! Authenticode, checked the way UEFI Secure Boot firmware checks a PE image, without the
//! firmware's db: the bytes in, what the signatures say and whether they hold out. Pure.
//! `recastctl bootkit check` uses it on a WinPE kit; the `boot_trust` module judges what it
//! returns (the image's Authenticode SHA-256 and each signature's certificate chain) against a
//! machine's `db` and `dbx`.
//!
//! For each `WIN_CERTIFICATE` in the PE's certificate table (Debian's shim carries two, one per
//! Microsoft UEFI CA; Microsoft's own boot files one):
//! 1. the PKCS#7 SignedData parses, its content is `SpcIndirectDataContent`, and it names the
//!    signer's certificate;
//! 2. the file's Authenticode digest (the image hashed without its checksum, its certificate
//!    table entry and the certificate table itself) equals the digest the signature carries;
//! 3. the signed attributes' `messageDigest` equals the hash of that content, and their
//!    `contentType` is `SpcIndirectDataContent`;
//! 4. the signer certificate's RSA key verifies the signature over the signed attributes.
//!
//! What this does not do, and says so: anchor the signer in Microsoft's roots (recast ships no
//! roots; `anchors` are what a site passes with `--trust`), check validity periods, key usage
//! or revocation (the firmware's dbx is the revocation list that counts at boot).

use authenticode::{AttributeCertificateIterator, AuthenticodeSignature};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use ring::signature::{self as rs, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::name::Name;

const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const SPC_INDIRECT_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// How far a chain is followed towards an anchor.
const MAX_CHAIN: usize = 8;

/// One certificate a signature carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainCertificate {
    /// Its DER encoding, byte for byte as the PKCS#7 carries it (what firmware compares with
    /// a `db`/`dbx` X.509 entry).
    pub der: Vec<u8>,
    /// Its subject's common name (or the whole subject when it has none).
    pub subject: String,
    /// Its issuer's common name.
    pub issuer: String,
    /// Whether it is on the signer's path: the signer itself, or the certificate whose key
    /// signed the one before it. Carried certificates that no path certificate links to come
    /// after the path with `false`.
    pub on_path: bool,
}

/// What one valid signature says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureReport {
    /// The signer certificate's subject common name (or the whole subject when it has none).
    pub signer: String,
    /// Its issuer's common name.
    pub issuer: String,
    /// Its serial number, upper-case hex.
    pub serial: String,
    /// The Authenticode digest both the file and the signature agree on, lower-case hex.
    pub sha256: String,
    /// The `--trust` certificate the signer chains to (its subject common name), if any.
    pub anchored_at: Option<String>,
    /// The signer's certificate first, then issuer-wards the certificates whose keys signed
    /// the one before (`on_path`), then the other certificates the PKCS#7 carries.
    pub chain: Vec<ChainCertificate>,
}

/// A PE image whose every signature holds out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeReport {
    /// The image's Authenticode SHA-256 digest (what a `db`/`dbx` EFI_CERT_SHA256 entry holds).
    pub sha256: [u8; 32],
    pub signatures: Vec<SignatureReport>,
}

/// Why a PE image is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    #[error("not a PE image ({0})")]
    NotPe(String),
    #[error("no Authenticode signature (the PE has no certificate table)")]
    Unsigned,
    #[error("its certificate table is damaged: {0}")]
    CertificateTable(String),
    #[error("signature #{index}: {problem}")]
    Signature {
        index: usize,
        problem: SignatureProblem,
    },
    #[error(
        "no signature chains to a --trust certificate (signed by {signers}); the anchors given were {anchors}"
    )]
    NotAnchored { signers: String, anchors: String },
}

/// What is wrong with one signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error("not an Authenticode PKCS#7 SignedData: {0}")]
    Parse(String),
    #[error(
        "digest algorithm {0}: recast checks SHA-256 Authenticode, which Microsoft signs current boot files with"
    )]
    DigestAlgorithm(String),
    #[error(
        "the file's Authenticode digest is sha256:{computed}, the signature signs sha256:{signed}: the file was changed after it was signed"
    )]
    DigestMismatch { computed: String, signed: String },
    #[error("the signature carries no signed attributes (Authenticode requires them)")]
    NoSignedAttributes,
    #[error(
        "the signed attributes' messageDigest does not match the signed content: the signature block was altered"
    )]
    MessageDigestMismatch,
    #[error("the signed attributes' contentType is not SpcIndirectDataContent")]
    ContentType,
    #[error("the signer's certificate is not in the signature")]
    NoSignerCertificate,
    #[error(
        "signature algorithm {0}: recast verifies RSA PKCS#1 v1.5 with SHA-256, what Microsoft's boot files use"
    )]
    SignatureAlgorithm(String),
    #[error(
        "the signature does not verify with the signer certificate's public key (signer {signer}): the signature block was altered or forged"
    )]
    BadSignature { signer: String },
}

/// Lower-case hex, two digits a byte (digests as db/dbx tools and the API write them).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A name's common name, or the whole name when it has none.
pub fn common_name(name: &Name) -> String {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)
        .map(|atv| String::from_utf8_lossy(atv.value.value()).into_owned())
        .unwrap_or_else(|| name.to_string())
}

/// The PE image's Authenticode SHA-256 digest, signed or not (what a `db`/`dbx`
/// EFI_CERT_SHA256 entry holds).
pub fn image_digest(data: &[u8]) -> Result<[u8; 32], PeError> {
    with_pe(data, digest_of)
}

fn digest_of(pe: &dyn authenticode::PeTrait) -> Result<[u8; 32], PeError> {
    let mut computed = Sha256::new();
    authenticode::authenticode_digest(pe, &mut computed)
        .map_err(|e| PeError::NotPe(format!("its headers do not add up: {e}")))?;
    Ok(computed.finalize().into())
}

/// Runs `f` on `data` parsed as PE32+ (x64 and arm64 EFI applications) or PE32.
fn with_pe<T>(
    data: &[u8],
    f: impl FnOnce(&dyn authenticode::PeTrait) -> Result<T, PeError>,
) -> Result<T, PeError> {
    use object::read::pe::{PeFile32, PeFile64};
    if !data.starts_with(b"MZ") {
        return Err(PeError::NotPe(
            "it does not start with the MZ header".into(),
        ));
    }
    let pe64 = PeFile64::parse(data);
    let pe32 = PeFile32::parse(data);
    match (&pe64, &pe32) {
        (Ok(pe), _) => f(pe),
        (_, Ok(pe)) => f(pe),
        (Err(e), _) => Err(PeError::NotPe(e.to_string())),
    }
}

/// Checks every signature of the PE image `data`. With `anchors`, at least one signature must
/// chain (through the certificates the signature carries) to one of them.
pub fn verify(data: &[u8], anchors: &[Certificate]) -> Result<PeReport, PeError> {
    with_pe(data, |pe| verify_pe(pe, anchors))
}

fn verify_pe(pe: &dyn authenticode::PeTrait, anchors: &[Certificate]) -> Result<PeReport, PeError> {
    let entries = AttributeCertificateIterator::new(pe)
        .map_err(|e| PeError::CertificateTable(e.to_string()))?
        .ok_or(PeError::Unsigned)?;
    let computed = digest_of(pe)?;

    let mut signatures = Vec::new();
    for (i, entry) in entries.enumerate() {
        let index = i + 1;
        let fail = |problem| PeError::Signature { index, problem };
        let entry = entry.map_err(|e| PeError::CertificateTable(e.to_string()))?;
        let sig = entry
            .get_authenticode_signature()
            .map_err(|e| fail(SignatureProblem::Parse(e.to_string())))?;
        signatures.push(check_signature(entry.data, &sig, &computed, anchors).map_err(fail)?);
    }
    if signatures.is_empty() {
        return Err(PeError::Unsigned);
    }
    if !anchors.is_empty() && signatures.iter().all(|s| s.anchored_at.is_none()) {
        return Err(PeError::NotAnchored {
            signers: signatures
                .iter()
                .map(|s| format!("{:?} issued by {:?}", s.signer, s.issuer))
                .collect::<Vec<_>>()
                .join(", "),
            anchors: anchors
                .iter()
                .map(|a| format!("{:?}", common_name(&a.tbs_certificate.subject)))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(PeReport {
        sha256: computed,
        signatures,
    })
}

fn check_signature(
    der_bytes: &[u8],
    sig: &AuthenticodeSignature,
    computed: &[u8],
    anchors: &[Certificate],
) -> Result<SignatureReport, SignatureProblem> {
    use SignatureProblem as P;
    // 2. The digest the signature carries is the file's.
    let alg = &sig.digest_algorithm().oid;
    if *alg != SHA256 {
        return Err(P::DigestAlgorithm(alg.to_string()));
    }
    if sig.digest() != computed {
        return Err(P::DigestMismatch {
            computed: hex(computed),
            signed: hex(sig.digest()),
        });
    }
    let signer_info = sig.signer_info();
    if signer_info.digest_alg.oid != SHA256 {
        return Err(P::DigestAlgorithm(signer_info.digest_alg.oid.to_string()));
    }

    // 3. The signed attributes bind that content.
    let attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or(P::NoSignedAttributes)?;
    let content = sig.encapsulated_content().ok_or(P::MessageDigestMismatch)?;
    let single = |oid: ObjectIdentifier| {
        attrs
            .iter()
            .find(|a| a.oid == oid)
            .and_then(|a| a.values.iter().next())
    };
    let message_digest = single(MESSAGE_DIGEST).ok_or(P::MessageDigestMismatch)?;
    if message_digest.value() != Sha256::digest(content).as_slice() {
        return Err(P::MessageDigestMismatch);
    }
    let content_type = single(CONTENT_TYPE)
        .and_then(|v| v.decode_as::<ObjectIdentifier>().ok())
        .ok_or(P::ContentType)?;
    if content_type != SPC_INDIRECT_DATA {
        return Err(P::ContentType);
    }

    // 1. The signer's certificate, from the SignedData's own certificate set.
    let certs = certificates(der_bytes).map_err(P::Parse)?;
    let signer = match &signer_info.sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => certs.iter().find(|c| {
            c.tbs_certificate.issuer == id.issuer
                && c.tbs_certificate.serial_number == id.serial_number
        }),
        SignerIdentifier::SubjectKeyIdentifier(_) => None,
    }
    .ok_or(P::NoSignerCertificate)?;
    let signer_name = common_name(&signer.tbs_certificate.subject);

    // 4. The signer's key signed the attributes (their DER as a SET, per RFC 5652 5.4).
    let sig_alg = &signer_info.signature_algorithm.oid;
    if *sig_alg != RSA_ENCRYPTION && *sig_alg != SHA256_WITH_RSA {
        return Err(P::SignatureAlgorithm(sig_alg.to_string()));
    }
    let signed = attrs.to_der().map_err(|e| P::Parse(e.to_string()))?;
    let key = signer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    UnparsedPublicKey::new(&rs::RSA_PKCS1_2048_8192_SHA256, key)
        .verify(&signed, signer_info.signature.as_bytes())
        .map_err(|_| P::BadSignature {
            signer: signer_name.clone(),
        })?;

    Ok(SignatureReport {
        signer: signer_name,
        issuer: common_name(&signer.tbs_certificate.issuer),
        serial: hex(signer.tbs_certificate.serial_number.as_bytes()).to_uppercase(),
        sha256: hex(computed),
        anchored_at: anchor(signer, &certs, anchors),
        chain: chain(signer, &certs).map_err(|e| P::Parse(e.to_string()))?,
    })
}

/// `signer`, the certificates issuer-wards from it among `carried` (each one's key signed the
/// one before), then the rest of `carried`.
fn chain(
    signer: &Certificate,
    carried: &[Certificate],
) -> Result<Vec<ChainCertificate>, der::Error> {
    let mut path = vec![signer];
    while path.len() < MAX_CHAIN {
        let current = path[path.len() - 1];
        let Some(next) = carried
            .iter()
            .find(|c| !path.contains(c) && signed_by(current, c))
        else {
            break;
        };
        path.push(next);
    }
    let rest = carried.iter().filter(|c| !path.contains(c));
    let entry = |c: &Certificate, on_path| {
        Ok(ChainCertificate {
            der: c.to_der()?,
            subject: common_name(&c.tbs_certificate.subject),
            issuer: common_name(&c.tbs_certificate.issuer),
            on_path,
        })
    };
    path.iter()
        .map(|c| entry(c, true))
        .chain(rest.map(|c| entry(c, false)))
        .collect()
}

/// The certificates a PKCS#7 SignedData carries.
fn certificates(der_bytes: &[u8]) -> Result<Vec<Certificate>, String> {
    let mut reader = der::SliceReader::new(der_bytes).map_err(|e| e.to_string())?;
    let info = <ContentInfo as der::Decode>::decode(&mut reader).map_err(|e| e.to_string())?;
    let signed = info
        .content
        .decode_as::<SignedData>()
        .map_err(|e| e.to_string())?;
    Ok(signed
        .certificates
        .map(|set| {
            set.0
                .into_vec()
                .into_iter()
                .filter_map(|c| match c {
                    CertificateChoices::Certificate(c) => Some(c),
                    CertificateChoices::Other(_) => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Whether `parent` issued `child`: `child`'s issuer is `parent`'s subject and `parent`'s RSA
/// key verifies `child`'s signature (sha256/384/512WithRSAEncryption, what UEFI chains use).
pub fn signed_by(child: &Certificate, parent: &Certificate) -> bool {
    let alg: &dyn rs::VerificationAlgorithm = match child.signature_algorithm.oid {
        o if o == SHA256_WITH_RSA => &rs::RSA_PKCS1_2048_8192_SHA256,
        o if o == SHA384_WITH_RSA => &rs::RSA_PKCS1_2048_8192_SHA384,
        o if o == SHA512_WITH_RSA => &rs::RSA_PKCS1_2048_8192_SHA512,
        _ => return false,
    };
    let Ok(tbs) = child.tbs_certificate.to_der() else {
        return false;
    };
    let Some(signature) = child.signature.as_bytes() else {
        return false;
    };
    let key = parent
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    child.tbs_certificate.issuer == parent.tbs_certificate.subject
        && UnparsedPublicKey::new(alg, key)
            .verify(&tbs, signature)
            .is_ok()
}

/// The anchor `signer` chains to through `intermediates`, by its common name.
fn anchor(
    signer: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Certificate],
) -> Option<String> {
    let mut current = signer;
    for _ in 0..MAX_CHAIN {
        if let Some(a) = anchors
            .iter()
            .find(|a| *a == current || signed_by(current, a))
        {
            return Some(common_name(&a.tbs_certificate.subject));
        }
        current = intermediates
            .iter()
            .find(|c| *c != current && signed_by(current, c))?;
    }
    None
}

/// Certificates from PEM (any number of `CERTIFICATE` blocks) or one DER certificate.
pub fn parse_anchors(bytes: &[u8]) -> Result<Vec<Certificate>, String> {
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let certs = Certificate::load_pem_chain(bytes).map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no CERTIFICATE block".into());
        }
        Ok(certs)
    } else {
        Certificate::from_der(bytes)
            .map(|c| vec![c])
            .map_err(|e| format!("neither PEM nor a DER certificate: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_pe_image_is_named_so() {
        assert!(matches!(verify(b"", &[]), Err(PeError::NotPe(_))));
        assert!(matches!(
            verify(b"#!/bin/sh\n", &[]),
            Err(PeError::NotPe(_))
        ));
        // An MZ header whose e_lfanew points nowhere.
        let mut mz = vec![0u8; 128];
        mz[..2].copy_from_slice(b"MZ");
        mz[0x3C..0x40].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
        assert!(matches!(verify(&mz, &[]), Err(PeError::NotPe(_))));
    }

    #[test]
    fn anchors_must_be_certificates() {
        assert!(parse_anchors(b"not a certificate").is_err());
        assert!(
            parse_anchors(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").is_err()
        );
    }

    #[test]
    fn hex_is_lower_case_and_two_digits_a_byte() {
        assert_eq!(hex(&[0, 0xab, 7]), "00ab07");
    }
}
