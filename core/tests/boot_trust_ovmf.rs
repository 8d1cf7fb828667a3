//! The Secure Boot decision against the real thing: the `db` and `dbx` of Debian's OVMF variable
//! store with Microsoft's keys (OVMF_VARS_4M.ms.fd: db holds Microsoft Windows Production PCA
//! 2011 and Microsoft Corporation UEFI CA 2011), and Debian's signed shim (Microsoft UEFI CA
//! 2011 and 2023) and GRUB (Debian Secure Boot CA), cached by `imager/env/signed-chain.sh`
//! under target/signed-chain/. Without them the test skips loudly, or fails with
//! RECAST_REQUIRE_PXE=1 (`.ci/run` sets it and fills the cache).

use std::fs;
use std::path::PathBuf;

use recast_core::authenticode;
use recast_core::boot_trust::{
    Allowed, BootManager, EFI_IMAGE_SECURITY_DATABASE_GUID, Firmware, MachineTrust, Refusal,
    SecureBoot, SignatureDatabase, Verdict, decide,
};

const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

fn skip(why: &str) {
    if std::env::var("RECAST_REQUIRE_PXE").as_deref() == Ok("1") {
        panic!("RECAST_REQUIRE_PXE=1 and {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// (shimx64.efi, grubx64.efi) from the signed-chain cache.
fn signed_chain() -> Option<(Vec<u8>, Vec<u8>)> {
    let cache = std::env::var_os("RECAST_SIGNED_CHAIN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/signed-chain")
        });
    let dir = fs::read_dir(&cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|d| d.path())
        .find(|d| d.join("shimx64.efi").is_file() && d.join("grubx64.efi").is_file())?;
    Some((
        fs::read(dir.join("shimx64.efi")).ok()?,
        fs::read(dir.join("grubx64.efi")).ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// The data of the live (VAR_ADDED) variable `name` with the image-security-database vendor
/// GUID, walking the authenticated variable store that follows the firmware volume header
/// (EDK2 MdeModulePkg/Include/Guid/VariableFormat.h: a 28-byte VARIABLE_STORE_HEADER, then
/// AUTHENTICATED_VARIABLE_HEADERs of 60 bytes, each followed by its UTF-16 name and data,
/// 4-byte aligned).
fn ovmf_variable(fd: &[u8], name: &str) -> Vec<u8> {
    let fv_header = u16::from_le_bytes([fd[0x30], fd[0x31]]) as usize;
    let store_size = u32_at(fd, fv_header + 16);
    let end = (fv_header + store_size).min(fd.len());
    let want: Vec<u8> = name
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut at = fv_header + 28;
    let mut found = None;
    while at + 60 <= end && fd[at..at + 2] == [0xaa, 0x55] {
        let state = fd[at + 2];
        let name_size = u32_at(fd, at + 36);
        let data_size = u32_at(fd, at + 40);
        let guid = &fd[at + 44..at + 60];
        let name_at = at + 60;
        let data_at = name_at + name_size;
        if state == 0x3f
            && guid == EFI_IMAGE_SECURITY_DATABASE_GUID.0
            && fd[name_at..data_at] == want
        {
            found = Some(fd[data_at..data_at + data_size].to_vec());
        }
        at = (data_at + data_size).next_multiple_of(4);
    }
    found.unwrap_or_else(|| panic!("no live {name} variable in {OVMF_VARS}"))
}

#[test]
fn debian_shim_boots_on_ovmf_with_microsofts_keys_and_grub_does_not() {
    let Ok(fd) = fs::read(OVMF_VARS) else {
        return skip(&format!("{OVMF_VARS} is missing (apt-get install ovmf)"));
    };
    let Some((shim, grub)) = signed_chain() else {
        return skip(
            "no signed shim/GRUB under target/signed-chain (run imager/env/signed-chain.sh or tests/pxe/setup.sh)",
        );
    };
    let db = SignatureDatabase::parse_lists(&ovmf_variable(&fd, "db")).unwrap();
    let dbx = SignatureDatabase::parse_lists(&ovmf_variable(&fd, "dbx")).unwrap();
    let names: Vec<&str> = db.certificates().map(|c| c.subject.as_str()).collect();
    assert_eq!(
        names,
        [
            "Microsoft Windows Production PCA 2011",
            "Microsoft Corporation UEFI CA 2011"
        ],
        "{db:?}"
    );
    // The same bytes as efivarfs would show them, attributes first.
    let mut efivar = 0x27u32.to_le_bytes().to_vec();
    efivar.extend_from_slice(&db.to_lists());
    assert_eq!(
        SignatureDatabase::parse_efivarfs(&efivar).unwrap().entries,
        db.entries
    );

    let machine = MachineTrust {
        firmware: Firmware::Uefi,
        secure_boot: SecureBoot::On,
        db,
        dbx,
    };

    // shim: its chain, signer first, carries Microsoft's UEFI CA 2011, byte-equal to db's.
    let shim = authenticode::verify(&shim, &[]).unwrap();
    let first = &shim.signatures[0];
    assert_eq!(first.chain[0].subject, first.signer);
    assert!(first.chain[0].on_path);
    let ca = first
        .chain
        .iter()
        .find(|c| c.subject == "Microsoft Corporation UEFI CA 2011")
        .unwrap();
    assert!(ca.on_path, "{:?}", first.chain);
    assert_eq!(
        ca.issuer,
        "Microsoft Corporation Third Party Marketplace Root"
    );
    assert!(
        machine.db.certificates().any(|c| c.der == ca.der),
        "the carried CA is not byte-equal to db's"
    );
    let v = decide(&machine, &BootManager::from_report(&shim));
    assert!(
        matches!(&v, Verdict::Boots { why: Allowed::ChainsToDb { db_certificate, .. }, secure_boot_unknown: false } if db_certificate == "Microsoft Corporation UEFI CA 2011"),
        "{v}"
    );
    assert!(
        v.to_string()
            .starts_with(r#"boots: chains to db certificate "Microsoft Corporation UEFI CA 2011""#),
        "{v}"
    );

    // GRUB: signed only under Debian's CA, which this db does not hold.
    let grub = authenticode::verify(&grub, &[]).unwrap();
    let v = decide(&machine, &BootManager::from_report(&grub));
    let Verdict::WillNotBoot {
        why: Refusal::MissingCa { needs, .. },
        ..
    } = &v
    else {
        panic!("{v}")
    };
    assert!(
        needs.iter().all(|n| n.issuer == "Debian Secure Boot CA"),
        "{needs:?}"
    );
    assert!(
        v.to_string()
            .starts_with(r#"will not boot: needs "Debian Secure Boot CA" in db"#),
        "{v}"
    );
    assert!(v.to_string().contains(r#"db holds "Microsoft Windows Production PCA 2011", "Microsoft Corporation UEFI CA 2011""#), "{v}");

    // shim's digest put in dbx revokes it, db notwithstanding.
    let mut revoked = machine.clone();
    revoked
        .dbx
        .entries
        .push(recast_core::boot_trust::SignatureEntry {
            owner: EFI_IMAGE_SECURITY_DATABASE_GUID,
            signature: recast_core::boot_trust::Signature::Sha256(shim.sha256),
        });
    let v = decide(&revoked, &BootManager::from_report(&shim));
    assert!(
        matches!(
            v,
            Verdict::WillNotBoot {
                why: Refusal::HashRevoked { .. },
                ..
            }
        ),
        "{v}"
    );
}
