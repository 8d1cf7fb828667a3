//! The decision on certificates made once with openssl (../testdata/boot_trust/make.sh):
//! "Test Root 2011" → "Test UEFI CA 2011" → "Test Boot Signer 2011"; "Test UEFI CA 2023" →
//! "Test Boot Signer 2023"; and an impostor "Test UEFI CA 2011" with another key.

use super::*;
use proptest::prelude::*;

const ROOT_2011: &[u8] = include_bytes!("../testdata/boot_trust/root-2011.der");
const CA_2011: &[u8] = include_bytes!("../testdata/boot_trust/ca-2011.der");
const SIGNER_2011: &[u8] = include_bytes!("../testdata/boot_trust/signer-2011.der");
const CA_2023: &[u8] = include_bytes!("../testdata/boot_trust/ca-2023.der");
const SIGNER_2023: &[u8] = include_bytes!("../testdata/boot_trust/signer-2023.der");
const IMPOSTOR_2011: &[u8] = include_bytes!("../testdata/boot_trust/impostor-2011.der");

const OWNER: Guid = Guid::from_fields(
    0x77fa9abd,
    0x0359,
    0x4d32,
    [0xbd, 0x60, 0x28, 0xf4, 0xe7, 0x8f, 0x78, 0x4b],
);
const IMAGE_HASH: [u8; 32] = [0x11; 32];
const OTHER_HASH: [u8; 32] = [0x22; 32];

fn x509(der: &[u8]) -> Signature {
    Signature::X509(Box::new(DbCertificate::from_der(der).unwrap()))
}

fn tbs_hash(der: &[u8]) -> Signature {
    let cert = Certificate::from_der(der).unwrap();
    Signature::X509Sha256 {
        tbs_sha256: Sha256::digest(cert.tbs_certificate.to_der().unwrap()).into(),
        revocation_time: [0; 16],
    }
}

fn database(signatures: Vec<Signature>) -> SignatureDatabase {
    SignatureDatabase {
        attributes: None,
        entries: signatures
            .into_iter()
            .map(|signature| SignatureEntry {
                owner: OWNER,
                signature,
            })
            .collect(),
    }
}

fn machine(db: Vec<Signature>, dbx: Vec<Signature>) -> MachineTrust {
    MachineTrust {
        firmware: Firmware::Uefi,
        secure_boot: SecureBoot::On,
        db: database(db),
        dbx: database(dbx),
    }
}

fn image(signatures: &[&[&[u8]]]) -> BootManager {
    BootManager {
        sha256: IMAGE_HASH,
        signatures: signatures
            .iter()
            .map(|s| s.iter().map(|c| c.to_vec()).collect())
            .collect(),
    }
}

/// Signed by "Test Boot Signer 2011", carrying "Test UEFI CA 2011" (as Microsoft's signatures carry their CA).
fn signed_2011() -> BootManager {
    image(&[&[SIGNER_2011, CA_2011]])
}

fn signed_2023() -> BootManager {
    image(&[&[SIGNER_2023]])
}

fn chains_to(v: &Verdict, cn: &str) -> bool {
    matches!(v, Verdict::Boots { why: Allowed::ChainsToDb { db_certificate, .. }, secure_boot_unknown: false } if db_certificate == cn)
}

#[test]
fn a_chain_reaches_db_by_its_issuer_its_carried_ca_or_byte_equal() {
    // db holds the root: the carried CA was issued by it.
    let v = decide(&machine(vec![x509(ROOT_2011)], vec![]), &signed_2011());
    assert!(chains_to(&v, "Test Root 2011"), "{v:?}");
    assert_eq!(
        v.to_string(),
        r#"boots: chains to db certificate "Test Root 2011" (signed by "Test Boot Signer 2011")"#
    );
    // db holds the CA: byte-equal to the carried one.
    let v = decide(&machine(vec![x509(CA_2011)], vec![]), &signed_2011());
    assert!(chains_to(&v, "Test UEFI CA 2011"), "{v:?}");
    // The CA is not carried: the signer was issued by the db certificate.
    let v = decide(
        &machine(vec![x509(CA_2011)], vec![]),
        &image(&[&[SIGNER_2011]]),
    );
    assert!(chains_to(&v, "Test UEFI CA 2011"), "{v:?}");
    // db holds the signer itself.
    let v = decide(
        &machine(vec![x509(SIGNER_2011)], vec![]),
        &image(&[&[SIGNER_2011]]),
    );
    assert!(chains_to(&v, "Test Boot Signer 2011"), "{v:?}");
}

#[test]
fn without_the_carried_ca_the_root_is_out_of_reach() {
    let v = decide(
        &machine(vec![x509(ROOT_2011)], vec![]),
        &image(&[&[SIGNER_2011]]),
    );
    let Verdict::WillNotBoot {
        why: Refusal::MissingCa { needs, .. },
        ..
    } = &v
    else {
        panic!("{v:?}")
    };
    assert_eq!(needs[0].issuer, "Test UEFI CA 2011");
}

#[test]
fn a_missing_ca_is_named_with_what_would_fix_it() {
    let v = decide(&machine(vec![x509(CA_2011)], vec![]), &signed_2023());
    assert_eq!(
        v,
        Verdict::WillNotBoot {
            why: Refusal::MissingCa {
                needs: vec![Needs {
                    signer: "Test Boot Signer 2023".into(),
                    issuer: "Test UEFI CA 2023".into(),
                    path: vec!["Test Boot Signer 2023".into()],
                }],
                db_holds: r#""Test UEFI CA 2011""#.into(),
            },
            secure_boot_unknown: false,
        }
    );
    let text = v.to_string();
    for want in [
        r#"will not boot: needs "Test UEFI CA 2023" in db"#,
        r#"signature #1 is by "Test Boot Signer 2023" under "Test UEFI CA 2023""#,
        r#"the machine's db holds "Test UEFI CA 2011""#,
        r#"A firmware or db update that adds "Test UEFI CA 2023" would make it boot"#,
        "or use an image whose boot manager is signed by a CA this db holds",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    // The full chain is shown issuer-wards, ending at the CA db would need.
    let text = decide(&machine(vec![x509(CA_2023)], vec![]), &signed_2011()).to_string();
    assert!(
        text.contains(
            r#"(chain: "Test Boot Signer 2011" <- "Test UEFI CA 2011" <- "Test Root 2011")"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"needs "Test Root 2011" in db"#), "{text}");
}

#[test]
fn a_name_alone_is_not_trust_the_key_must_verify() {
    let v = decide(
        &machine(vec![x509(IMPOSTOR_2011)], vec![]),
        &image(&[&[SIGNER_2011]]),
    );
    assert!(!v.boots(), "{v:?}");
    // Nor does an impostor in dbx revoke the real chain.
    let v = decide(
        &machine(vec![x509(CA_2011)], vec![x509(IMPOSTOR_2011)]),
        &image(&[&[SIGNER_2011]]),
    );
    assert!(chains_to(&v, "Test UEFI CA 2011"), "{v:?}");
}

#[test]
fn the_image_hash_in_db_allows_it_signed_or_not() {
    let want = Verdict::Boots {
        why: Allowed::HashInDb {
            sha256: "11".repeat(32),
        },
        secure_boot_unknown: false,
    };
    assert_eq!(
        decide(
            &machine(vec![Signature::Sha256(IMAGE_HASH)], vec![]),
            &image(&[])
        ),
        want
    );
    assert_eq!(
        decide(
            &machine(vec![Signature::Sha256(IMAGE_HASH), x509(CA_2023)], vec![]),
            &signed_2011()
        ),
        want
    );
    // Another hash does not.
    let v = decide(
        &machine(vec![Signature::Sha256(OTHER_HASH)], vec![]),
        &image(&[]),
    );
    assert!(
        matches!(
            v,
            Verdict::WillNotBoot {
                why: Refusal::Unsigned { .. },
                ..
            }
        ),
        "{v:?}"
    );
    assert!(
        v.to_string().contains("the boot manager is unsigned"),
        "{v}"
    );
}

#[test]
fn dbx_by_hash_refuses_and_names_the_hash() {
    let v = decide(
        &machine(
            vec![x509(CA_2011), Signature::Sha256(IMAGE_HASH)],
            vec![Signature::Sha256(IMAGE_HASH)],
        ),
        &signed_2011(),
    );
    assert_eq!(
        v,
        Verdict::WillNotBoot {
            why: Refusal::HashRevoked {
                sha256: "11".repeat(32)
            },
            secure_boot_unknown: false
        }
    );
    assert!(v.to_string().contains(&format!(
        "revoked: the boot manager's digest sha256:{} is in dbx",
        "11".repeat(32)
    )));
}

#[test]
fn dbx_by_certificate_refuses_byte_equal_or_issued_by_it() {
    for (revoked, name) in [
        (SIGNER_2011, "Test Boot Signer 2011"),
        (CA_2011, "Test UEFI CA 2011"),
        (ROOT_2011, "Test Root 2011"),
    ] {
        let v = decide(
            &machine(vec![x509(CA_2011)], vec![x509(revoked)]),
            &signed_2011(),
        );
        assert_eq!(
            v,
            Verdict::WillNotBoot {
                why: Refusal::CertificateRevoked {
                    signer: "Test Boot Signer 2011".into(),
                    dbx_certificate: name.into(),
                },
                secure_boot_unknown: false
            }
        );
        assert!(
            v.to_string()
                .contains(&format!("{name:?}, which is in dbx")),
            "{v}"
        );
    }
    // By TBS hash (EFI_CERT_X509_SHA256): a chain certificate, or the db certificate reached.
    let v = decide(
        &machine(vec![x509(ROOT_2011)], vec![tbs_hash(CA_2011)]),
        &signed_2011(),
    );
    assert_eq!(
        v,
        Verdict::WillNotBoot {
            why: Refusal::CertificateHashRevoked {
                certificate: "Test UEFI CA 2011".into()
            },
            secure_boot_unknown: false
        }
    );
    let v = decide(
        &machine(vec![x509(ROOT_2011)], vec![tbs_hash(ROOT_2011)]),
        &signed_2011(),
    );
    assert_eq!(
        v,
        Verdict::WillNotBoot {
            why: Refusal::CertificateHashRevoked {
                certificate: "Test Root 2011".into()
            },
            secure_boot_unknown: false
        }
    );
}

#[test]
fn dbx_beats_db_and_one_revoked_signature_forbids_the_image() {
    let v = decide(
        &machine(vec![x509(CA_2011)], vec![x509(CA_2011)]),
        &signed_2011(),
    );
    assert!(!v.boots(), "{v:?}");
    // Two signatures (like shim's): the 2023 one chains to db, the 2011 one is revoked.
    let both = image(&[&[SIGNER_2011, CA_2011], &[SIGNER_2023]]);
    let v = decide(&machine(vec![x509(CA_2023)], vec![x509(CA_2011)]), &both);
    assert!(
        matches!(
            v,
            Verdict::WillNotBoot {
                why: Refusal::CertificateRevoked { .. },
                ..
            }
        ),
        "{v:?}"
    );
    // Without the revocation either signature is enough.
    assert!(chains_to(
        &decide(&machine(vec![x509(CA_2023)], vec![]), &both),
        "Test UEFI CA 2023"
    ));
    assert!(chains_to(
        &decide(&machine(vec![x509(ROOT_2011)], vec![]), &both),
        "Test Root 2011"
    ));
    // A missing CA names what each signature needs.
    let v = decide(&machine(vec![], vec![]), &both);
    assert!(
        v.to_string()
            .contains(r#"needs "Test Root 2011" or "Test UEFI CA 2023" in db"#),
        "{v}"
    );
    assert!(v.to_string().contains("db holds no certificate"), "{v}");
}

#[test]
fn bios_and_secure_boot_off_check_nothing() {
    let revoked = machine(vec![], vec![Signature::Sha256(IMAGE_HASH), x509(CA_2011)]);
    for (firmware, secure_boot, want) in [
        (Firmware::Bios, SecureBoot::On, NotChecked::Bios),
        (Firmware::Bios, SecureBoot::Unknown, NotChecked::Bios),
        (Firmware::Uefi, SecureBoot::Off, NotChecked::SecureBootOff),
    ] {
        let m = MachineTrust {
            firmware,
            secure_boot,
            ..revoked.clone()
        };
        let v = decide(&m, &signed_2011());
        assert_eq!(v, Verdict::NotChecked(want));
        assert!(v.boots());
    }
    assert_eq!(
        Verdict::NotChecked(NotChecked::SecureBootOff).to_string(),
        "boots, not checked: Secure Boot is off"
    );
}

#[test]
fn secure_boot_unknown_is_judged_as_on_and_says_so() {
    let unknown = |db, dbx| MachineTrust {
        secure_boot: SecureBoot::Unknown,
        ..machine(db, dbx)
    };
    let v = decide(&unknown(vec![x509(CA_2011)], vec![]), &signed_2011());
    assert_eq!(
        v,
        Verdict::Boots {
            why: Allowed::ChainsToDb {
                signer: "Test Boot Signer 2011".into(),
                db_certificate: "Test UEFI CA 2011".into()
            },
            secure_boot_unknown: true
        }
    );
    assert!(
        v.to_string()
            .starts_with("boots: Secure Boot state unknown, judged as if on: chains to")
    );
    let v = decide(&unknown(vec![x509(CA_2011)], vec![]), &signed_2023());
    assert!(
        matches!(
            v,
            Verdict::WillNotBoot {
                secure_boot_unknown: true,
                ..
            }
        ),
        "{v:?}"
    );
    let text = v.to_string();
    assert!(
        text.starts_with("will not boot: Secure Boot state unknown, judged as if on: needs"),
        "{text}"
    );
    assert!(
        text.contains("If Secure Boot is in fact off on this machine"),
        "{text}"
    );
}

#[test]
fn unknown_entry_types_are_kept_and_ignored() {
    // An RSA-2048 entry type (EFI_CERT_RSA2048_GUID) holding bytes the decision must not read.
    let rsa2048 = Guid::from_fields(
        0x3c5766e8,
        0x269c,
        0x4e34,
        [0xaa, 0x14, 0xed, 0x77, 0x6e, 0x85, 0xb3, 0xb6],
    );
    let m = machine(
        vec![Signature::Unknown {
            signature_type: rsa2048,
            data: CA_2011.to_vec(),
        }],
        vec![],
    );
    assert!(!decide(&m, &signed_2011()).boots());
    assert_eq!(m.db.unknown_types(), vec![rsa2048]);
    let parsed = SignatureDatabase::parse_lists(&m.db.to_lists()).unwrap();
    assert_eq!(parsed, m.db);
}

#[test]
fn guids_are_the_ones_firmware_writes() {
    // The bytes as they sit in Debian's OVMF_VARS_4M.ms.fd (read with a hex dump).
    assert_eq!(
        hex(&EFI_IMAGE_SECURITY_DATABASE_GUID.0),
        "cbb219d73a3d9645a3bcdad00e67656f"
    );
    assert_eq!(
        hex(&EFI_CERT_X509_GUID.0),
        "a159c0a5e494a74a87b5ab155c2bf072"
    );
    assert_eq!(
        hex(&EFI_CERT_SHA256_GUID.0),
        "2616c4c14c509240aca941f936934328"
    );
    assert_eq!(
        EFI_IMAGE_SECURITY_DATABASE_GUID.to_string(),
        "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
    );
    assert_eq!(
        EFI_CERT_X509_SHA256_GUID.to_string(),
        "3bd2a492-96c0-4079-b420-fcf98ef103ed"
    );
}

/// One list: type, sizes, then raw entry bytes.
fn list(kind: Guid, size: u32, header: u32, sig_size: u32, rest: &[u8]) -> Vec<u8> {
    let mut out = kind.0.to_vec();
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&header.to_le_bytes());
    out.extend_from_slice(&sig_size.to_le_bytes());
    out.extend_from_slice(rest);
    out
}

fn problem(bytes: &[u8]) -> ListProblem {
    match SignatureDatabase::parse_lists(bytes) {
        Err(SignatureListError::List { problem, .. }) => problem,
        other => panic!("{other:?}"),
    }
}

#[test]
fn efivarfs_puts_the_attributes_first() {
    let db = database(vec![
        x509(CA_2011),
        Signature::Sha256(IMAGE_HASH),
        Signature::Sha256(OTHER_HASH),
    ]);
    let mut var = 0x27u32.to_le_bytes().to_vec();
    var.extend_from_slice(&db.to_lists());
    let parsed = SignatureDatabase::parse_efivarfs(&var).unwrap();
    assert_eq!(parsed.attributes, Some(0x27));
    assert_eq!(parsed.entries, db.entries);
    // The two hashes share one list of two 48-byte entries.
    assert_eq!(db.to_lists().len(), 28 + 16 + CA_2011.len() + 28 + 2 * 48);
    // An empty variable is an empty database; three bytes is not a variable.
    assert_eq!(
        SignatureDatabase::parse_efivarfs(&[7, 0, 0, 0])
            .unwrap()
            .entries,
        vec![]
    );
    assert_eq!(
        SignatureDatabase::parse_efivarfs(&[7, 0, 0]),
        Err(SignatureListError::NoAttributes { len: 3 })
    );
    // Offsets in errors count the attributes.
    var.extend_from_slice(&[0; 5]);
    let e = SignatureDatabase::parse_efivarfs(&var).unwrap_err();
    assert!(
        matches!(e, SignatureListError::List { list: 3, offset, .. } if offset == var.len() - 5),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.starts_with("signature list #3 at byte"), "{text}");
    assert!(
        text.contains("only 5 bytes are left, and a list header needs 28"),
        "{text}"
    );
    assert!(text.contains("read it again (efivarfs: /sys/firmware/efi/efivars/db-d719b2cb-3d3a-4596-a3bc-dad00e67656f)"), "{text}");
}

#[test]
fn malformed_lists_say_what_is_wrong() {
    let hash_entry = [OWNER.0.to_vec(), vec![0xab; 32]].concat();
    assert_eq!(problem(&[0; 10]), ListProblem::TruncatedHeader { left: 10 });
    assert_eq!(
        problem(&list(EFI_CERT_SHA256_GUID, 20, 0, 48, &[])),
        ListProblem::ListTooSmall {
            size: 20,
            header: 0
        }
    );
    assert_eq!(
        problem(&list(EFI_CERT_SHA256_GUID, 40, 16, 48, &[0; 12])),
        ListProblem::ListTooSmall {
            size: 40,
            header: 16
        }
    );
    assert_eq!(
        problem(&list(EFI_CERT_SHA256_GUID, 28 + 96, 0, 48, &hash_entry)),
        ListProblem::ListOverrun {
            size: 124,
            left: 76
        }
    );
    assert_eq!(
        problem(&list(EFI_CERT_SHA256_GUID, 28 + 48, 0, 16, &hash_entry)),
        ListProblem::SignatureTooSmall { size: 16 }
    );
    assert_eq!(
        problem(&list(EFI_CERT_SHA256_GUID, 28 + 48, 0, 0, &hash_entry)),
        ListProblem::SignatureTooSmall { size: 0 }
    );
    assert_eq!(
        problem(&list(EFI_CERT_SHA256_GUID, 28 + 48, 0, 40, &hash_entry)),
        ListProblem::Ragged { body: 48, size: 40 }
    );
    assert_eq!(
        problem(&list(EFI_CERT_SHA256_GUID, 28 + 48, 0, 24, &hash_entry)),
        ListProblem::WrongSize {
            kind: "SHA-256",
            header: 0,
            expected: 48,
            found: 24
        }
    );
    assert_eq!(
        problem(&list(
            EFI_CERT_X509_SHA256_GUID,
            28 + 48,
            0,
            48,
            &hash_entry
        )),
        ListProblem::WrongSize {
            kind: "X.509 SHA-256",
            header: 0,
            expected: 64,
            found: 48
        }
    );
    let cert = [OWNER.0.to_vec(), CA_2011.to_vec()].concat();
    let with_header = [vec![0; 4], cert.clone()].concat();
    assert_eq!(
        problem(&list(
            EFI_CERT_X509_GUID,
            (28 + with_header.len()) as u32,
            4,
            cert.len() as u32,
            &with_header
        )),
        ListProblem::X509Header { header: 4 }
    );
    let mut broken = cert.clone();
    broken.truncate(cert.len() - 1);
    let p = problem(&list(
        EFI_CERT_X509_GUID,
        (28 + broken.len()) as u32,
        0,
        broken.len() as u32,
        &broken,
    ));
    assert!(
        matches!(&p, ListProblem::BadCertificate { entry: 1, owner, .. } if *owner == OWNER),
        "{p:?}"
    );
    assert!(
        p.to_string().starts_with(
            "entry #1 (owner 77fa9abd-0359-4d32-bd60-28f4e78f784b) is not a DER X.509 certificate"
        ),
        "{p}"
    );
    // A second list's problem is located after the first, good one.
    let good = list(EFI_CERT_SHA256_GUID, 28 + 48, 0, 48, &hash_entry);
    let bytes = [good.clone(), vec![1, 2, 3]].concat();
    assert_eq!(
        SignatureDatabase::parse_lists(&bytes),
        Err(SignatureListError::List {
            list: 2,
            offset: good.len(),
            problem: ListProblem::TruncatedHeader { left: 3 }
        })
    );
    // A list with a header the type allows is read past it.
    let other = Guid([9; 16]);
    let db = SignatureDatabase::parse_lists(&list(
        other,
        28 + 4 + 20,
        4,
        20,
        &[[0; 4].to_vec(), vec![5; 20]].concat(),
    ))
    .unwrap();
    assert_eq!(
        db.entries,
        vec![SignatureEntry {
            owner: Guid([5; 16]),
            signature: Signature::Unknown {
                signature_type: other,
                data: vec![5; 4]
            }
        }]
    );
}

// Property tests: the decision against a model written from the rule itself.

/// The certificates a test may put in db or dbx, and whether a signature reaches each.
const POOL: [&[u8]; 6] = [
    ROOT_2011,
    CA_2011,
    SIGNER_2011,
    CA_2023,
    SIGNER_2023,
    IMPOSTOR_2011,
];

/// The signatures an image may carry: (certificates, the POOL indices its chain reaches).
fn signature_choice(i: usize) -> (Vec<Vec<u8>>, &'static [usize]) {
    match i {
        // Signer and carried CA: reaches the signer, the CA, and the root that issued the CA.
        0 => (vec![SIGNER_2011.to_vec(), CA_2011.to_vec()], &[0, 1, 2]),
        // Signer only: reaches the signer and the CA that issued it.
        1 => (vec![SIGNER_2011.to_vec()], &[1, 2]),
        _ => (vec![SIGNER_2023.to_vec()], &[3, 4]),
    }
}

/// A db/dbx entry: a POOL certificate, the image hash, or another hash.
fn entry(i: usize) -> Signature {
    match i {
        0..=5 => x509(POOL[i]),
        6 => Signature::Sha256(IMAGE_HASH),
        _ => Signature::Sha256(OTHER_HASH),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = SignatureDatabase::parse_lists(&bytes);
        let _ = SignatureDatabase::parse_efivarfs(&bytes);
    }

    #[test]
    fn parsing_a_damaged_database_never_panics(
        picks in proptest::collection::vec(0usize..8, 0..6),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = database(picks.into_iter().map(entry).collect()).to_lists();
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes.truncate(cut.index(bytes.len() + 1).max(1));
        }
        let _ = SignatureDatabase::parse_lists(&bytes);
    }

    #[test]
    fn lists_round_trip(picks in proptest::collection::vec(0usize..8, 0..8), owner in any::<[u8; 16]>()) {
        let mut db = database(picks.into_iter().map(entry).collect());
        for e in &mut db.entries {
            e.owner = Guid(owner);
        }
        prop_assert_eq!(SignatureDatabase::parse_lists(&db.to_lists()).unwrap(), db);
    }

    #[test]
    fn the_decision_follows_the_rule(
        db_picks in proptest::collection::btree_set(0usize..8, 0..5),
        dbx_picks in proptest::collection::btree_set(0usize..8, 0..3),
        sigs in proptest::collection::vec(0usize..3, 0..3),
        secure_boot in prop_oneof![Just(SecureBoot::On), Just(SecureBoot::Off), Just(SecureBoot::Unknown)],
        bios in any::<bool>(),
    ) {
        let chosen: Vec<_> = sigs.iter().map(|&i| signature_choice(i)).collect();
        let reaches = |pick: usize| chosen.iter().any(|(_, r)| r.contains(&pick));
        let hit = |picks: &std::collections::BTreeSet<usize>| {
            picks.iter().any(|&p| if p == 6 { true } else { p < 6 && reaches(p) })
        };
        let forbidden = hit(&dbx_picks);
        let allowed = hit(&db_picks);

        let img = BootManager { sha256: IMAGE_HASH, signatures: chosen.iter().map(|(c, _)| c.clone()).collect() };
        let mut m = machine(
            db_picks.iter().map(|&p| entry(p)).collect(),
            dbx_picks.iter().map(|&p| entry(p)).collect(),
        );
        m.secure_boot = secure_boot;
        if bios {
            m.firmware = Firmware::Bios;
        }
        let v = decide(&m, &img);
        if bios || secure_boot == SecureBoot::Off {
            prop_assert!(matches!(v, Verdict::NotChecked(_)), "{:?}", v);
        } else {
            prop_assert_eq!(v.boots(), allowed && !forbidden, "{}", v);
            let unknown = secure_boot == SecureBoot::Unknown;
            let flagged = matches!(v, Verdict::Boots { secure_boot_unknown, .. } | Verdict::WillNotBoot { secure_boot_unknown, .. } if secure_boot_unknown == unknown);
            prop_assert!(flagged, "{:?}", v);
            if forbidden {
                prop_assert!(v.to_string().starts_with("will not boot: ") && v.to_string().contains("revoked: "), "{}", v);
            }
        }
        // The order of entries does not matter.
        m.db.entries.reverse();
        m.dbx.entries.reverse();
        prop_assert_eq!(decide(&m, &img).boots(), v.boots());
    }
}
