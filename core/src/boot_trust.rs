//! Will this boot manager start on this machine? The Secure Boot decision a UEFI firmware makes
//! when it loads a PE image, made beforehand from what the machine trusts (its `db` and `dbx`
//! variables, read by the imaging environment) and what the image carries (its boot manager's
//! Authenticode digest and certificate chain, from [`crate::authenticode`]). Pure.
//!
//! # The signature database format
//! A `db`/`dbx` variable (vendor GUID [`EFI_IMAGE_SECURITY_DATABASE_GUID`]) is a sequence of
//! `EFI_SIGNATURE_LIST`s (UEFI 2.10, 32.4.1 "Signature Database"; EDK2
//! `MdePkg/Include/Guid/ImageAuthentication.h`), all little-endian:
//! `SignatureType` (GUID, 16 bytes), `SignatureListSize` (u32, the whole list with this
//! 28-byte header), `SignatureHeaderSize` (u32), `SignatureSize` (u32, one entry), then
//! `SignatureHeaderSize` bytes of header, then entries of `SignatureSize` bytes, each a
//! `SignatureOwner` GUID (16 bytes) followed by the data: a DER certificate for
//! [`EFI_CERT_X509_GUID`], a 32-byte image digest for [`EFI_CERT_SHA256_GUID`], a 32-byte
//! TBSCertificate digest and a 16-byte `EFI_TIME` of revocation for
//! [`EFI_CERT_X509_SHA256_GUID`] (dbx only). efivarfs shows a variable as its 4-byte attributes
//! followed by that data ([`SignatureDatabase::parse_efivarfs`]).
//!
//! # The rule, as EDK2 applies it
//! Followed from EDK2's `SecurityPkg/Library/DxeImageVerificationLib/DxeImageVerificationLib.c`
//! (`DxeImageVerificationHandler`, `IsForbiddenByDbx`, `IsAllowedByDb`) and
//! `CryptoPkg/Library/BaseCryptLib/Pk/CryptPkcs7VerifyCommon.c` (`Pkcs7Verify`):
//! - For each signature, `IsForbiddenByDbx` runs `AuthenticodeVerify` with each dbx X.509
//!   certificate as the only trusted root: the signature is forbidden when its chain reaches
//!   that certificate. `Pkcs7Verify` sets `X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_NO_CHECK_TIME`
//!   and `X509_PURPOSE_ANY`, so "reaches" means a certificate of the signer's path is byte-equal
//!   to the root, or was issued by it (issuer name = its subject, and its key verifies the
//!   signature); validity dates and key usage are not checked. Then the path's certificates are
//!   looked up by TBS hash (`EFI_CERT_X509_SHA256`); a hit forbids unless a timestamp
//!   countersignature predates the revocation time (recast does not read timestamps, so a hit
//!   forbids: the cautious side).
//! - Otherwise `IsAllowedByDb` runs the same verification with each db X.509 certificate as the
//!   root; a success allows (unless that db certificate's own TBS hash is in dbx).
//! - The image's digest in dbx forbids it, whatever its signatures say; its digest in db allows
//!   it. An unsigned image is allowed only by its digest in db.
//! - The handler's policy, in its own words: "At least one valid signature or at least one hash
//!   value of the image must match a record in the security database "db", and no valid
//!   signature nor any hash value of the image may be reflected in the security database
//!   "dbx"." So dbx beats db, and one forbidden signature forbids the image.
//!
//! # Secure Boot unknown
//! When the imaging environment could not tell whether Secure Boot is on, [`decide`] judges as
//! if it were on: an image that passes boots either way (firmware with Secure Boot off runs
//! anything), and one that fails is refused, since it would leave a machine that cannot start
//! if Secure Boot is in fact on. Refusing costs a person a look; allowing could cost a machine.

use std::fmt;

use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use crate::authenticode::{PeError, PeReport, common_name, hex, signed_by};

/// A UEFI GUID, in its in-memory (mixed-endian) byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The GUID written `{d1, d2, d3, {d4...}}`, as UEFI headers spell it.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

impl fmt::Display for Guid {
    /// Registry format, e.g. `d719b2cb-3d3a-4596-a3bc-dad00e67656f`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]])
        )?;
        for (i, b) in g[8..].iter().enumerate() {
            if i == 2 {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The vendor GUID of the `db` and `dbx` variables (`EFI_IMAGE_SECURITY_DATABASE_GUID`).
pub const EFI_IMAGE_SECURITY_DATABASE_GUID: Guid = Guid::from_fields(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// An entry holding a DER X.509 certificate.
pub const EFI_CERT_X509_GUID: Guid = Guid::from_fields(
    0xa5c059a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);
/// An entry holding a SHA-256 Authenticode image digest.
pub const EFI_CERT_SHA256_GUID: Guid = Guid::from_fields(
    0xc1c41626,
    0x504c,
    0x4092,
    [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28],
);
/// An entry holding the SHA-256 of a certificate's TBSCertificate and its revocation time.
pub const EFI_CERT_X509_SHA256_GUID: Guid = Guid::from_fields(
    0x3bd2a492,
    0x96c0,
    0x4079,
    [0xb4, 0x20, 0xfc, 0xf9, 0x8e, 0xf1, 0x03, 0xed],
);

/// `EFI_SIGNATURE_LIST` header: type GUID and three u32.
const LIST_HEADER: usize = 16 + 4 + 4 + 4;
/// `SignatureOwner`.
const OWNER: usize = 16;

/// A certificate of a `db`/`dbx` X.509 entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbCertificate {
    /// Its DER, as the entry holds it.
    pub der: Vec<u8>,
    /// Its subject's common name (or the whole subject).
    pub subject: String,
    /// Its issuer's common name.
    pub issuer: String,
    cert: Certificate,
}

impl DbCertificate {
    /// A DER certificate, or what is wrong with it.
    pub fn from_der(der: &[u8]) -> Result<DbCertificate, der::Error> {
        let cert = Certificate::from_der(der)?;
        Ok(DbCertificate {
            der: der.to_vec(),
            subject: common_name(&cert.tbs_certificate.subject),
            issuer: common_name(&cert.tbs_certificate.issuer),
            cert,
        })
    }
}

/// What one entry of a signature list holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// `EFI_CERT_X509_GUID`: a certificate (trusted in db, revoked in dbx, with what it issued).
    X509(Box<DbCertificate>),
    /// `EFI_CERT_SHA256_GUID`: an image's Authenticode SHA-256.
    Sha256([u8; 32]),
    /// `EFI_CERT_X509_SHA256_GUID`: a certificate's TBSCertificate SHA-256, revoked from the
    /// `EFI_TIME` that follows (all zero: always).
    X509Sha256 {
        tbs_sha256: [u8; 32],
        revocation_time: [u8; 16],
    },
    /// Any other type (RSA-2048 keys, SHA-1 or SHA-384 hashes, ...): kept, named in reports,
    /// not used by the decision.
    Unknown { signature_type: Guid, data: Vec<u8> },
}

/// One entry and who added it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureEntry {
    /// `SignatureOwner`: the agent that added it (Microsoft's is 77fa9abd-0359-4d32-bd60-28f4e78f784b).
    pub owner: Guid,
    pub signature: Signature,
}

/// A parsed `db` or `dbx`: every entry of every list, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignatureDatabase {
    /// The variable's attributes when read through efivarfs.
    pub attributes: Option<u32>,
    pub entries: Vec<SignatureEntry>,
}

/// What is wrong with a signature list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListProblem {
    #[error("only {left} bytes are left, and a list header needs {LIST_HEADER}")]
    TruncatedHeader { left: usize },
    #[error(
        "SignatureListSize {size} is smaller than its {LIST_HEADER}-byte header plus SignatureHeaderSize {header}"
    )]
    ListTooSmall { size: u32, header: u32 },
    #[error("SignatureListSize {size} runs past the end of the variable ({left} bytes are left)")]
    ListOverrun { size: u32, left: usize },
    #[error("SignatureSize {size} cannot hold the {OWNER}-byte SignatureOwner GUID and any data")]
    SignatureTooSmall { size: u32 },
    #[error("its {body} bytes of entries are not a whole number of {size}-byte entries")]
    Ragged { body: usize, size: u32 },
    #[error(
        "type {kind} needs SignatureHeaderSize 0 and SignatureSize {expected}, the list says {header} and {found}"
    )]
    WrongSize {
        kind: &'static str,
        header: u32,
        expected: usize,
        found: u32,
    },
    #[error("type X.509 needs SignatureHeaderSize 0, the list says {header}")]
    X509Header { header: u32 },
    #[error("entry #{entry} (owner {owner}) is not a DER X.509 certificate: {error}")]
    BadCertificate {
        entry: usize,
        owner: Guid,
        error: String,
    },
}

/// Why a `db`/`dbx` variable cannot be read as signature lists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureListError {
    #[error(
        "the variable is {len} bytes, too short for the 4 bytes of attributes efivarfs puts first: give the whole file from /sys/firmware/efi/efivars/"
    )]
    NoAttributes { len: usize },
    #[error(
        "signature list #{list} at byte {offset}: {problem}. The variable is damaged or is not a db/dbx signature database: read it again (efivarfs: /sys/firmware/efi/efivars/db-{EFI_IMAGE_SECURITY_DATABASE_GUID}), and if it reads the same, the firmware's db needs a reset to its defaults or a vendor update"
    )]
    List {
        list: usize,
        offset: usize,
        problem: ListProblem,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    Guid(g)
}

impl SignatureDatabase {
    /// A variable as efivarfs shows it: 4 bytes of attributes, then the signature lists.
    pub fn parse_efivarfs(bytes: &[u8]) -> Result<SignatureDatabase, SignatureListError> {
        if bytes.len() < 4 {
            return Err(SignatureListError::NoAttributes { len: bytes.len() });
        }
        let mut db = Self::parse_lists(&bytes[4..]).map_err(|e| match e {
            SignatureListError::List {
                list,
                offset,
                problem,
            } => SignatureListError::List {
                list,
                offset: offset + 4,
                problem,
            },
            other => other,
        })?;
        db.attributes = Some(u32_at(bytes, 0));
        Ok(db)
    }

    /// The variable's data alone: a sequence of `EFI_SIGNATURE_LIST`s (empty: no entries).
    pub fn parse_lists(bytes: &[u8]) -> Result<SignatureDatabase, SignatureListError> {
        let mut entries = Vec::new();
        let mut offset = 0;
        let mut list = 0;
        while offset < bytes.len() {
            list += 1;
            let fail = |problem| SignatureListError::List {
                list,
                offset,
                problem,
            };
            let rest = &bytes[offset..];
            if rest.len() < LIST_HEADER {
                return Err(fail(ListProblem::TruncatedHeader { left: rest.len() }));
            }
            let kind = guid_at(rest, 0);
            let size = u32_at(rest, 16);
            let header = u32_at(rest, 20);
            let sig_size = u32_at(rest, 24);
            let start = (LIST_HEADER as u64) + u64::from(header);
            if u64::from(size) < start {
                return Err(fail(ListProblem::ListTooSmall { size, header }));
            }
            if u64::from(size) > rest.len() as u64 {
                return Err(fail(ListProblem::ListOverrun {
                    size,
                    left: rest.len(),
                }));
            }
            let start = start as usize;
            let body = &rest[start..size as usize];
            if (sig_size as usize) <= OWNER {
                return Err(fail(ListProblem::SignatureTooSmall { size: sig_size }));
            }
            if !body.len().is_multiple_of(sig_size as usize) {
                return Err(fail(ListProblem::Ragged {
                    body: body.len(),
                    size: sig_size,
                }));
            }
            let fixed = |name, data: usize| {
                if header != 0 || sig_size as usize != OWNER + data {
                    Err(fail(ListProblem::WrongSize {
                        kind: name,
                        header,
                        expected: OWNER + data,
                        found: sig_size,
                    }))
                } else {
                    Ok(())
                }
            };
            if kind == EFI_CERT_SHA256_GUID {
                fixed("SHA-256", 32)?;
            } else if kind == EFI_CERT_X509_SHA256_GUID {
                fixed("X.509 SHA-256", 32 + 16)?;
            } else if kind == EFI_CERT_X509_GUID && header != 0 {
                return Err(fail(ListProblem::X509Header { header }));
            }
            for (i, raw) in body.chunks_exact(sig_size as usize).enumerate() {
                let owner = guid_at(raw, 0);
                let data = &raw[OWNER..];
                let signature = if kind == EFI_CERT_X509_GUID {
                    Signature::X509(Box::new(DbCertificate::from_der(data).map_err(|e| {
                        fail(ListProblem::BadCertificate {
                            entry: i + 1,
                            owner,
                            error: e.to_string(),
                        })
                    })?))
                } else if kind == EFI_CERT_SHA256_GUID {
                    Signature::Sha256(data.try_into().expect("size checked above"))
                } else if kind == EFI_CERT_X509_SHA256_GUID {
                    Signature::X509Sha256 {
                        tbs_sha256: data[..32].try_into().expect("size checked above"),
                        revocation_time: data[32..].try_into().expect("size checked above"),
                    }
                } else {
                    Signature::Unknown {
                        signature_type: kind,
                        data: data.to_vec(),
                    }
                };
                entries.push(SignatureEntry { owner, signature });
            }
            offset += size as usize;
        }
        Ok(SignatureDatabase {
            attributes: None,
            entries,
        })
    }

    /// The signature lists for these entries (without attributes): one list per run of
    /// entries of the same type and size, as firmware setup tools write them.
    pub fn to_lists(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut runs: Vec<(Guid, Vec<&SignatureEntry>, Vec<u8>)> = Vec::new();
        for e in &self.entries {
            let (kind, data) = match &e.signature {
                Signature::X509(c) => (EFI_CERT_X509_GUID, c.der.clone()),
                Signature::Sha256(h) => (EFI_CERT_SHA256_GUID, h.to_vec()),
                Signature::X509Sha256 {
                    tbs_sha256,
                    revocation_time,
                } => (
                    EFI_CERT_X509_SHA256_GUID,
                    [&tbs_sha256[..], &revocation_time[..]].concat(),
                ),
                Signature::Unknown {
                    signature_type,
                    data,
                } => (*signature_type, data.clone()),
            };
            let mut entry = e.owner.0.to_vec();
            entry.extend_from_slice(&data);
            match runs.last_mut() {
                Some((k, es, bytes)) if *k == kind && bytes.len() / es.len() == entry.len() => {
                    es.push(e);
                    bytes.extend_from_slice(&entry);
                }
                _ => runs.push((kind, vec![e], entry)),
            }
        }
        for (kind, es, bytes) in runs {
            let sig_size = bytes.len() / es.len();
            out.extend_from_slice(&kind.0);
            out.extend_from_slice(&((LIST_HEADER + bytes.len()) as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(sig_size as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// The X.509 certificates.
    pub fn certificates(&self) -> impl Iterator<Item = &DbCertificate> {
        self.entries.iter().filter_map(|e| match &e.signature {
            Signature::X509(c) => Some(&**c),
            _ => None,
        })
    }

    /// Whether it holds the image digest `sha256`.
    pub fn holds_sha256(&self, sha256: &[u8; 32]) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(&e.signature, Signature::Sha256(h) if h == sha256))
    }

    /// Whether it holds the TBSCertificate hash of `der` (an `EFI_CERT_X509_SHA256` entry).
    fn holds_tbs_hash_of(&self, cert: &Certificate) -> bool {
        let Ok(tbs) = cert.tbs_certificate.to_der() else {
            return false;
        };
        let hash: [u8; 32] = Sha256::digest(tbs).into();
        self.entries.iter().any(
            |e| matches!(&e.signature, Signature::X509Sha256 { tbs_sha256, .. } if *tbs_sha256 == hash),
        )
    }

    /// The types of entries the decision does not use, each once.
    pub fn unknown_types(&self) -> Vec<Guid> {
        let mut out: Vec<Guid> = Vec::new();
        for e in &self.entries {
            if let Signature::Unknown { signature_type, .. } = &e.signature
                && !out.contains(signature_type)
            {
                out.push(*signature_type);
            }
        }
        out
    }

    /// The subjects of its certificates, quoted and comma-separated ("no certificate" when none).
    pub fn certificate_names(&self) -> String {
        let names: Vec<String> = self
            .certificates()
            .map(|c| format!("{:?}", c.subject))
            .collect();
        if names.is_empty() {
            "no certificate".into()
        } else {
            names.join(", ")
        }
    }
}

/// How the machine's firmware starts a boot manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (or UEFI's compatibility module): no signature is checked.
    Bios,
    Uefi,
}

/// The firmware's Secure Boot state, as the imaging environment read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureBoot {
    On,
    Off,
    /// Not readable (no efivarfs, the SecureBoot variable missing or unreadable).
    Unknown,
}

/// What a machine's firmware trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineTrust {
    pub firmware: Firmware,
    pub secure_boot: SecureBoot,
    pub db: SignatureDatabase,
    pub dbx: SignatureDatabase,
}

/// What the firmware checks of a boot manager: its Authenticode SHA-256 and, per valid
/// signature, the certificates it carries (DER; the signer first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootManager {
    pub sha256: [u8; 32],
    pub signatures: Vec<Vec<Vec<u8>>>,
}

impl BootManager {
    /// Reads a boot manager's file as firmware would: its digest and the certificates of each
    /// signature. Unsigned is not an error here (db may hold its digest); a damaged signature
    /// or a file that is not PE is.
    pub fn read(data: &[u8]) -> Result<BootManager, PeError> {
        match crate::authenticode::verify(data, &[]) {
            Ok(report) => Ok(BootManager::from_report(&report)),
            Err(PeError::Unsigned) => Ok(BootManager {
                sha256: crate::authenticode::image_digest(data)?,
                signatures: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// From a verified PE (every signature in it holds out).
    pub fn from_report(report: &PeReport) -> BootManager {
        BootManager {
            sha256: report.sha256,
            signatures: report
                .signatures
                .iter()
                .map(|s| s.chain.iter().map(|c| c.der.clone()).collect())
                .collect(),
        }
    }
}

/// Why a boot manager will start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// A signature's chain reaches this db certificate.
    ChainsToDb {
        signer: String,
        db_certificate: String,
    },
    /// The image's digest is in db.
    HashInDb { sha256: String },
}

/// Why nothing is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotChecked {
    Bios,
    SecureBootOff,
}

/// What one signature would need from db.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    /// The signer's common name.
    pub signer: String,
    /// The CA the chain ends at: the issuer of the last certificate the signature carries on
    /// its path, the certificate db must hold (or hold one that issued it).
    pub issuer: String,
    /// The path, signer first (common names), any of which db could hold instead.
    pub path: Vec<String>,
}

/// Why a boot manager will not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No signature chains to a db certificate and the digest is not in db.
    MissingCa { needs: Vec<Needs>, db_holds: String },
    /// Unsigned, and its digest is not in db.
    Unsigned { sha256: String, db_holds: String },
    /// The image's digest is in dbx.
    HashRevoked { sha256: String },
    /// A signature's chain reaches a dbx certificate (byte-equal, or issued by it).
    CertificateRevoked {
        signer: String,
        dbx_certificate: String,
    },
    /// A certificate of a signature's path (or the db certificate it chains to) is revoked by
    /// its TBS hash in dbx.
    CertificateHashRevoked { certificate: String },
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The firmware will run it. `secure_boot_unknown`: judged as if Secure Boot were on.
    Boots {
        why: Allowed,
        secure_boot_unknown: bool,
    },
    /// The firmware will refuse it ("Security Violation" / "Access Denied").
    /// `secure_boot_unknown`: judged as if Secure Boot were on (see the module doc).
    WillNotBoot {
        why: Refusal,
        secure_boot_unknown: bool,
    },
    /// No signature check happens: it boots regardless.
    NotChecked(NotChecked),
}

impl Verdict {
    /// Whether the machine would start the boot manager (or was assumed to, Secure Boot off).
    pub fn boots(&self) -> bool {
        !matches!(self, Verdict::WillNotBoot { .. })
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowed::ChainsToDb {
                signer,
                db_certificate,
            } => write!(
                f,
                "chains to db certificate {db_certificate:?} (signed by {signer:?})"
            ),
            Allowed::HashInDb { sha256 } => {
                write!(f, "its Authenticode digest sha256:{sha256} is in db")
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MissingCa { needs, db_holds } => {
                let issuers: Vec<String> =
                    needs.iter().map(|n| format!("{:?}", n.issuer)).collect();
                let mut issuers_uniq = issuers.clone();
                issuers_uniq.dedup();
                write!(f, "needs {} in db: ", issuers_uniq.join(" or "))?;
                for (i, n) in needs.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(
                        f,
                        "signature #{} is by {:?} under {:?} (chain: {})",
                        i + 1,
                        n.signer,
                        n.issuer,
                        n.path
                            .iter()
                            .map(|p| format!("{p:?}"))
                            .chain(std::iter::once(format!("{:?}", n.issuer)))
                            .collect::<Vec<_>>()
                            .join(" <- ")
                    )?;
                }
                write!(
                    f,
                    ", and the machine's db holds {db_holds}. A firmware or db update that adds {} would make it boot, or use an image whose boot manager is signed by a CA this db holds",
                    issuers_uniq.join(" or ")
                )
            }
            Refusal::Unsigned { sha256, db_holds } => write!(
                f,
                "the boot manager is unsigned (no signature names a readable signer certificate) and its digest sha256:{sha256} is not in db (which holds {db_holds}); use an image with a signed boot manager"
            ),
            Refusal::HashRevoked { sha256 } => write!(
                f,
                "revoked: the boot manager's digest sha256:{sha256} is in dbx; use an image with a boot manager released after the revocation"
            ),
            Refusal::CertificateRevoked {
                signer,
                dbx_certificate,
            } => write!(
                f,
                "revoked: the signature by {signer:?} chains to {dbx_certificate:?}, which is in dbx; use an image whose boot manager is signed under a CA that is not revoked"
            ),
            Refusal::CertificateHashRevoked { certificate } => write!(
                f,
                "revoked: certificate {certificate:?} of the boot manager's chain is in dbx (by its TBS hash); use an image whose boot manager is signed under a CA that is not revoked"
            ),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unknown = "Secure Boot state unknown, judged as if on: ";
        match self {
            Verdict::Boots {
                why,
                secure_boot_unknown,
            } => {
                f.write_str("boots: ")?;
                if *secure_boot_unknown {
                    f.write_str(unknown)?;
                }
                write!(f, "{why}")
            }
            Verdict::WillNotBoot {
                why,
                secure_boot_unknown,
            } => {
                f.write_str("will not boot: ")?;
                if *secure_boot_unknown {
                    f.write_str(unknown)?;
                }
                write!(f, "{why}")?;
                if *secure_boot_unknown {
                    f.write_str(
                        ". If Secure Boot is in fact off on this machine, make the imaging environment able to read the SecureBoot variable (efivarfs mounted), and it will be judged as off",
                    )?;
                }
                Ok(())
            }
            Verdict::NotChecked(NotChecked::Bios) => {
                f.write_str("boots, not checked: BIOS firmware checks no signature")
            }
            Verdict::NotChecked(NotChecked::SecureBootOff) => {
                f.write_str("boots, not checked: Secure Boot is off")
            }
        }
    }
}

/// The maximum path length followed (firmware chains are two or three certificates).
const MAX_PATH: usize = 8;

/// One signature's certificates: the signer's path issuer-wards (each certificate's issuer
/// found among the carried ones by name and verified signature, as OpenSSL builds it).
struct SignerPath {
    /// Parsed certificates of the path, with their DER.
    path: Vec<(Vec<u8>, Certificate)>,
}

impl SignerPath {
    fn build(carried: &[Vec<u8>]) -> Option<SignerPath> {
        let parsed: Vec<(Vec<u8>, Certificate)> = carried
            .iter()
            .filter_map(|der| Certificate::from_der(der).ok().map(|c| (der.clone(), c)))
            .collect();
        let first = carried.first()?;
        let signer = parsed.iter().find(|(d, _)| d == first)?.clone();
        let mut path = vec![signer];
        while path.len() < MAX_PATH {
            let current = &path[path.len() - 1].1;
            let Some(next) = parsed
                .iter()
                .find(|(d, c)| !path.iter().any(|(p, _)| p == d) && signed_by(current, c))
            else {
                break;
            };
            path.push(next.clone());
        }
        Some(SignerPath { path })
    }

    fn signer(&self) -> String {
        common_name(&self.path[0].1.tbs_certificate.subject)
    }

    /// Whether the path reaches `anchor` as `Pkcs7Verify` with it as the one trusted root
    /// would: a path certificate byte-equal to it, or issued by it.
    fn reaches(&self, anchor: &DbCertificate) -> bool {
        self.path
            .iter()
            .any(|(der, cert)| *der == anchor.der || signed_by(cert, &anchor.cert))
    }

    fn needs(&self) -> Needs {
        let last = &self.path[self.path.len() - 1].1;
        Needs {
            signer: self.signer(),
            issuer: common_name(&last.tbs_certificate.issuer),
            path: self
                .path
                .iter()
                .map(|(_, c)| common_name(&c.tbs_certificate.subject))
                .collect(),
        }
    }
}

/// Whether `image`'s boot manager starts on `machine`, and why (see the module doc for the
/// rule). Signatures whose signer certificate is missing or unreadable count as absent, as they
/// do for firmware.
pub fn decide(machine: &MachineTrust, image: &BootManager) -> Verdict {
    let secure_boot_unknown = match (machine.firmware, machine.secure_boot) {
        (Firmware::Bios, _) => return Verdict::NotChecked(NotChecked::Bios),
        (Firmware::Uefi, SecureBoot::Off) => return Verdict::NotChecked(NotChecked::SecureBootOff),
        (Firmware::Uefi, SecureBoot::On) => false,
        (Firmware::Uefi, SecureBoot::Unknown) => true,
    };
    let refuse = |why| Verdict::WillNotBoot {
        why,
        secure_boot_unknown,
    };
    let sha256 = hex(&image.sha256);
    let paths: Vec<SignerPath> = image
        .signatures
        .iter()
        .filter_map(|s| SignerPath::build(s))
        .collect();

    // dbx first: any signature reaching a dbx certificate, any path certificate's TBS hash,
    // or the image digest forbids the image.
    for p in &paths {
        if let Some(revoked) = machine.dbx.certificates().find(|c| p.reaches(c)) {
            return refuse(Refusal::CertificateRevoked {
                signer: p.signer(),
                dbx_certificate: revoked.subject.clone(),
            });
        }
        if let Some((_, c)) = p
            .path
            .iter()
            .find(|(_, c)| machine.dbx.holds_tbs_hash_of(c))
        {
            return refuse(Refusal::CertificateHashRevoked {
                certificate: common_name(&c.tbs_certificate.subject),
            });
        }
    }
    if machine.dbx.holds_sha256(&image.sha256) {
        return refuse(Refusal::HashRevoked { sha256 });
    }

    // Then db: per signature, the first db certificate its chain reaches allows it, unless
    // that certificate's own TBS hash is in dbx (EDK2 then stops for that signature); or the
    // digest.
    let mut anchor_revoked = None;
    for p in &paths {
        if let Some(anchor) = machine.db.certificates().find(|c| p.reaches(c)) {
            if machine.dbx.holds_tbs_hash_of(&anchor.cert) {
                anchor_revoked.get_or_insert(anchor.subject.clone());
                continue;
            }
            return Verdict::Boots {
                why: Allowed::ChainsToDb {
                    signer: p.signer(),
                    db_certificate: anchor.subject.clone(),
                },
                secure_boot_unknown,
            };
        }
    }
    if machine.db.holds_sha256(&image.sha256) {
        return Verdict::Boots {
            why: Allowed::HashInDb { sha256 },
            secure_boot_unknown,
        };
    }
    if let Some(certificate) = anchor_revoked {
        return refuse(Refusal::CertificateHashRevoked { certificate });
    }
    let db_holds = machine.db.certificate_names();
    if paths.is_empty() {
        return refuse(Refusal::Unsigned { sha256, db_holds });
    }
    refuse(Refusal::MissingCa {
        needs: paths.iter().map(SignerPath::needs).collect(),
        db_holds,
    })
}

#[cfg(test)]
mod tests;
