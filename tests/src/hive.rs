//! Stand-in BCD templates for the tests. hivex (and so hivexsh, the tool recast-imager edits BCD
//! stores with) can edit hives but cannot create one, and a real `BCD-Template` is Microsoft's
//! file, so the tests make their own with recast-core's regf writer ([`recast_core::regf`],
//! re-exported here with the names the suites use).

pub use recast_core::regf::{Key, Value, reg_sz};
pub use recast_core::winpe_boot::BCD_ROOT;

/// The hive file for `root`. Panics on a tree the writer cannot store (non-ASCII or empty
/// names, values over 16 KiB): a fixture bug.
pub fn hive(root: &Key) -> Vec<u8> {
    recast_core::regf::hive(root).unwrap_or_else(|e| panic!("test hive: {e}"))
}

/// A stand-in for `\Windows\System32\config\BCD-Template`: the store root, and with
/// `with_objects` the `Description` key (KeyName = BCD00000000, as the real template has it)
/// and an empty `Objects` key. Without, the root is bare, which is the harder case for an
/// upsert (every key must be added).
pub fn bcd_template(with_objects: bool) -> Vec<u8> {
    let mut root = Key::new(BCD_ROOT);
    if with_objects {
        root = root
            .subkey(Key::new("Description").value("KeyName", 1, reg_sz("BCD00000000")))
            .subkey(Key::new("Objects"));
    }
    hive(&root)
}

/// The bare template: a valid hive whose root key is a BCD store root with nothing in it.
pub fn empty_bcd_template() -> Vec<u8> {
    bcd_template(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_hives_rooted_at_the_store_root() {
        for with in [false, true] {
            let h = bcd_template(with);
            assert_eq!(&h[..4], b"regf");
            let root = 4096 + u32::from_le_bytes(h[0x24..0x28].try_into().unwrap()) as usize;
            assert_eq!(
                &h[root + 0x50..root + 0x50 + BCD_ROOT.len()],
                BCD_ROOT.as_bytes()
            );
        }
        assert_eq!(empty_bcd_template(), bcd_template(false));
        assert_ne!(bcd_template(true), bcd_template(false));
    }
}
