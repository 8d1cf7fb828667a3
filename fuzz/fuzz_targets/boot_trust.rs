//! Bytes a machine or an image hands recast for the Secure Boot check: a `db`/`dbx` variable as
//! efivarfs shows it (from the imaging environment's firmware) and a boot manager file (from an
//! untrusted golden image). The signature-list parser and the Authenticode reader return a
//! value or a typed error, never panic; the decision then runs on whatever they accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_core::boot_trust::{
    BootManager, Firmware, MachineTrust, SecureBoot, SignatureDatabase, decide,
};

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input: a variable, then a PE image.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (split as usize * rest.len()) / 255;
    let (var, pe) = rest.split_at(at.min(rest.len()));
    let db = SignatureDatabase::parse_efivarfs(var).unwrap_or_default();
    if let Ok(lists) = SignatureDatabase::parse_lists(&db.to_lists()) {
        assert_eq!(lists.entries, db.entries, "lists round-trip");
    }
    let _ = recast_core::boot_manager::facts_of(Some(pe));
    if let Ok(manager) = BootManager::read(pe) {
        let machine = MachineTrust {
            firmware: Firmware::Uefi,
            secure_boot: SecureBoot::On,
            db: db.clone(),
            dbx: db,
        };
        let _ = decide(&machine, &manager).to_string();
    }
});
