//! Stand-in BCD templates for the tests. hivex (and so hivexsh, the tool recast-imager edits BCD
//! stores with) can edit hives but cannot create one, and a real `BCD-Template` is Microsoft's
//! file, so the tests make their own with recast-core's regf writer ([`recast_core::regf`],
//! re-exported here with the names the suites use).

pub use recast_core::regf::{Key, REG_DWORD, REG_EXPAND_SZ, REG_SZ, Value, reg_sz};
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

/// The agent service's command line a golden image must carry (what `sc.exe create` records
/// for the install command recast documents).
pub const AGENT_SERVICE_COMMAND: &str = r#""C:\Program Files\recast\recast-agent.exe" run --agent-config C:\ProgramData\recast\agent.json"#;

/// An installed Windows' offline SOFTWARE hive: `image_state` under Setup\State (None: the key
/// without the value, as on a machine sysprep never ran on) and the EditionID.
pub fn software_hive(image_state: Option<&str>, edition: &str) -> Vec<u8> {
    let mut state = Key::new("State");
    if let Some(s) = image_state {
        state = state.value("ImageState", REG_SZ, reg_sz(s));
    }
    hive(
        &Key::new("ROOT").subkey(
            Key::new("Microsoft")
                .subkey(
                    Key::new("Windows")
                        .subkey(Key::new("CurrentVersion").subkey(Key::new("Setup").subkey(state))),
                )
                .subkey(
                    Key::new("Windows NT").subkey(Key::new("CurrentVersion").value(
                        "EditionID",
                        REG_SZ,
                        reg_sz(edition),
                    )),
                ),
        ),
    )
}

/// An installed Windows' offline SYSTEM hive (amd64): ControlSet001 current, a DHCP client
/// service, and with `agent` a `recast-agent` service running that command line at boot.
pub fn system_hive(agent: Option<&str>) -> Vec<u8> {
    let mut services = Key::new("Services").subkey(
        Key::new("Dhcp")
            .value(
                "ImagePath",
                REG_EXPAND_SZ,
                reg_sz(r"%SystemRoot%\system32\svchost.exe -k LocalServiceNetworkRestricted -p"),
            )
            .value("Start", REG_DWORD, 2u32.to_le_bytes().to_vec()),
    );
    if let Some(command) = agent {
        services = services.subkey(
            Key::new("recast-agent")
                .value("ImagePath", REG_EXPAND_SZ, reg_sz(command))
                .value("Start", REG_DWORD, 2u32.to_le_bytes().to_vec()),
        );
    }
    hive(
        &Key::new("ROOT")
            .subkey(Key::new("Select").value("Current", REG_DWORD, 1u32.to_le_bytes().to_vec()))
            .subkey(
                Key::new("ControlSet001")
                    .subkey(services)
                    .subkey(
                        Key::new("Control").subkey(Key::new("Session Manager").subkey(
                            Key::new("Environment").value(
                                "PROCESSOR_ARCHITECTURE",
                                REG_SZ,
                                reg_sz("AMD64"),
                            ),
                        )),
                    ),
            ),
    )
}

/// Writes a deployable image's hives (generalized, the agent service, `edition`) into the
/// tree of an installed Windows at `root`.
pub fn write_deployable_hives(root: &std::path::Path, edition: &str) {
    let config = root.join("Windows/System32/config");
    std::fs::create_dir_all(&config).expect("create tree");
    std::fs::write(
        config.join("SOFTWARE"),
        software_hive(Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"), edition),
    )
    .expect("write SOFTWARE hive");
    std::fs::write(
        config.join("SYSTEM"),
        system_hive(Some(AGENT_SERVICE_COMMAND)),
    )
    .expect("write SYSTEM hive");
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
