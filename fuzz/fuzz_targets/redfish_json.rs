//! Any JSON a BMC sends as a Systems collection, a ComputerSystem, an ActionInfo or a log
//! entry: recast's readings of it (bmc/src/model.rs, events.rs) give values or typed errors,
//! never a panic, and the decisions over what they read keep their promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recast_bmc::events;
use recast_bmc::model::{
    self, BootMode, NetworkBoot, OverrideCheck, PowerAction, action_info_reset_types,
    check_override, choose_reset, choose_system, collection_members, override_patch, parse_system,
};
use serde_json::Value;

const URL: &str = "https://bmc.example/redfish/v1/Systems/1";

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(members) = collection_members(URL, &v) {
        let _ = choose_system(&members, None);
        if let Some(first) = members.first() {
            let id = first.rsplit('/').next().unwrap_or_default().to_string();
            assert!(choose_system(&members, Some(first)).is_ok());
            let _ = choose_system(&members, Some(&id));
        }
    }
    let allowed = action_info_reset_types(URL, &v).ok().flatten();
    if let Ok(sys) = parse_system(URL, &v, Some("\"e\"".into())) {
        for action in [PowerAction::On, PowerAction::Off, PowerAction::Cycle] {
            for list in [allowed.as_deref(), sys.reset_allowed.as_deref()] {
                if let (Ok(reset), Some(list)) =
                    (choose_reset(action, sys.power_state.as_ref(), list), list)
                {
                    assert!(list.iter().any(|a| a == reset), "{reset} not in {list:?}");
                }
            }
        }
        let current = sys.boot.clone().unwrap_or_default();
        for target in [NetworkBoot::Pxe, NetworkBoot::UefiHttp] {
            for mode in [None, Some(BootMode::Uefi), Some(BootMode::Legacy)] {
                if let Ok(patch) = override_patch(target, mode, &current) {
                    // What was asked for, read back, is armed.
                    let b = &patch["Boot"];
                    let echoed = model::BootOverride {
                        target: b["BootSourceOverrideTarget"].as_str().map(String::from),
                        enabled: b["BootSourceOverrideEnabled"].as_str().map(String::from),
                        mode: b["BootSourceOverrideMode"].as_str().map(String::from),
                        allowed_targets: None,
                    };
                    let check = check_override(target, mode, Some(&echoed));
                    assert!(
                        check == OverrideCheck::Armed || echoed.mode.is_none(),
                        "{check:?} for {patch}"
                    );
                }
                let _ = check_override(target, mode, sys.boot.as_ref());
            }
        }
    }
    let entries: Vec<events::LogEntry> = match &v {
        Value::Array(items) => items
            .iter()
            .filter_map(|e| events::parse_entry("Sel", e))
            .collect(),
        v => v
            .get("Members")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|e| events::parse_entry("Log1", e))
                    .collect()
            })
            .unwrap_or_default(),
    };
    for e in &entries {
        if let Some(m) = &e.message {
            let _ = events::parse_bugcheck(m);
        }
        let _ = events::is_os_crash(e);
    }
    let crashes = events::crash_evidence(&entries);
    assert!(crashes.len() <= entries.len());
});
