//! Pure readings of Redfish resources and the decisions made over them: which system, which
//! ResetType, whether a boot override took. No I/O here.

use std::fmt;

use serde_json::Value;

use crate::error::{RedfishError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    Paused,
    /// A value outside the Redfish enum; kept for display, treated as neither on nor off.
    Other(String),
}

impl PowerState {
    pub fn parse(s: &str) -> PowerState {
        match s {
            "On" => PowerState::On,
            "Off" => PowerState::Off,
            "PoweringOn" => PowerState::PoweringOn,
            "PoweringOff" => PowerState::PoweringOff,
            "Paused" => PowerState::Paused,
            other => PowerState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PowerState::On => f.write_str("On"),
            PowerState::Off => f.write_str("Off"),
            PowerState::PoweringOn => f.write_str("PoweringOn"),
            PowerState::PoweringOff => f.write_str("PoweringOff"),
            PowerState::Paused => f.write_str("Paused"),
            PowerState::Other(s) => f.write_str(s),
        }
    }
}

/// The boot source override as the BMC reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootOverride {
    pub target: Option<String>,
    pub enabled: Option<String>,
    pub mode: Option<String>,
    /// `BootSourceOverrideTarget@Redfish.AllowableValues`, when advertised.
    pub allowed_targets: Option<Vec<String>>,
}

/// What recast needs to know about one ComputerSystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    pub id: String,
    /// The resource path (`@odata.id`).
    pub path: String,
    pub name: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub power_state: Option<PowerState>,
    pub health: Option<String>,
    pub boot: Option<BootOverride>,
    pub reset_target: Option<String>,
    pub reset_allowed: Option<Vec<String>>,
    pub reset_action_info: Option<String>,
    pub log_services: Option<String>,
    pub managers: Vec<String>,
    /// The ETag to send in If-Match when changing this resource.
    pub etag: Option<String>,
}

fn opt_str(url: &str, v: &Value, pointer: &str) -> Result<Option<String>> {
    match v.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RedfishError::MissingProperty {
            url: url.to_string(),
            property: format!(
                "{} (a string)",
                pointer.trim_start_matches('/').replace('/', ".")
            ),
        }),
    }
}

fn opt_str_list(
    url: &str,
    v: &Value,
    key: &str,
    in_obj: Option<&Value>,
) -> Result<Option<Vec<String>>> {
    let Some(obj) = in_obj else { return Ok(None) };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| RedfishError::MissingProperty {
                        url: url.to_string(),
                        property: format!("{key} (a list of strings)"),
                    })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => {
            let _ = v;
            Err(RedfishError::MissingProperty {
                url: url.to_string(),
                property: format!("{key} (a list of strings)"),
            })
        }
    }
}

/// The `@odata.id` of each member of a collection.
pub fn collection_members(url: &str, v: &Value) -> Result<Vec<String>> {
    let members = v.get("Members").and_then(Value::as_array).ok_or_else(|| {
        RedfishError::MissingProperty {
            url: url.to_string(),
            property: "Members (a list)".into(),
        }
    })?;
    members
        .iter()
        .map(|m| {
            m.get("@odata.id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| RedfishError::MissingProperty {
                    url: url.to_string(),
                    property: "Members[].@odata.id".into(),
                })
        })
        .collect()
}

/// Picks this endpoint's system from the Systems collection: the one named by `system_id`
/// (an Id or a path), or the only one.
pub fn choose_system(members: &[String], system_id: Option<&str>) -> Result<String> {
    match system_id {
        Some(wanted) => {
            let wanted_trim = wanted.trim_end_matches('/');
            members
                .iter()
                .find(|m| {
                    let m = m.trim_end_matches('/');
                    m == wanted_trim || m.rsplit('/').next() == Some(wanted_trim)
                })
                .cloned()
                .ok_or_else(|| RedfishError::NotFound {
                    url: "/redfish/v1/Systems".into(),
                    message: format!(
                        "no system {wanted:?} among {}; fix spec.bmc.systemId",
                        members.join(", ")
                    ),
                })
        }
        None => match members {
            [only] => Ok(only.clone()),
            [] => Err(RedfishError::NotFound {
                url: "/redfish/v1/Systems".into(),
                message: "the BMC lists no ComputerSystem".into(),
            }),
            many => Err(RedfishError::AmbiguousSystem {
                count: many.len(),
                ids: many.join(", "),
            }),
        },
    }
}

pub fn parse_system(url: &str, v: &Value, etag: Option<String>) -> Result<SystemInfo> {
    let id = opt_str(url, v, "/Id")?.ok_or_else(|| RedfishError::MissingProperty {
        url: url.to_string(),
        property: "Id".into(),
    })?;
    let path = opt_str(url, v, "/@odata.id")?.unwrap_or_else(|| url.to_string());
    let boot = match v.get("Boot") {
        None | Some(Value::Null) => None,
        Some(b @ Value::Object(_)) => Some(BootOverride {
            target: opt_str(url, v, "/Boot/BootSourceOverrideTarget")?,
            enabled: opt_str(url, v, "/Boot/BootSourceOverrideEnabled")?,
            mode: opt_str(url, v, "/Boot/BootSourceOverrideMode")?,
            allowed_targets: opt_str_list(
                url,
                v,
                "BootSourceOverrideTarget@Redfish.AllowableValues",
                Some(b),
            )?,
        }),
        Some(_) => {
            return Err(RedfishError::MissingProperty {
                url: url.to_string(),
                property: "Boot (an object)".into(),
            });
        }
    };
    let reset = v.pointer("/Actions/#ComputerSystem.Reset");
    let managers = match v.pointer("/Links/ManagedBy") {
        Some(Value::Array(ms)) => ms
            .iter()
            .filter_map(|m| {
                m.get("@odata.id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect(),
        _ => Vec::new(),
    };
    let etag = etag.or(opt_str(url, v, "/@odata.etag")?);
    Ok(SystemInfo {
        id,
        path,
        name: opt_str(url, v, "/Name")?,
        manufacturer: opt_str(url, v, "/Manufacturer")?,
        model: opt_str(url, v, "/Model")?,
        serial: opt_str(url, v, "/SerialNumber")?,
        uuid: opt_str(url, v, "/UUID")?,
        power_state: opt_str(url, v, "/PowerState")?.map(|s| PowerState::parse(&s)),
        health: opt_str(url, v, "/Status/Health")?,
        boot,
        reset_target: opt_str(url, v, "/Actions/#ComputerSystem.Reset/target")?,
        reset_allowed: opt_str_list(url, v, "ResetType@Redfish.AllowableValues", reset)?,
        reset_action_info: opt_str(url, v, "/Actions/#ComputerSystem.Reset/@Redfish.ActionInfo")?,
        log_services: opt_str(url, v, "/LogServices/@odata.id")?,
        managers,
        etag,
    })
}

/// The ResetType values an ActionInfo resource allows.
pub fn action_info_reset_types(url: &str, v: &Value) -> Result<Option<Vec<String>>> {
    let Some(params) = v.get("Parameters").and_then(Value::as_array) else {
        return Ok(None);
    };
    let reset = params
        .iter()
        .find(|p| p.get("Name").and_then(Value::as_str) == Some("ResetType"));
    opt_str_list(url, v, "AllowableValues", reset)
}

/// A power operation as people ask for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    /// Restart now, whatever the OS is doing (a machine on a blue screen cannot restart
    /// itself); a machine that is off is switched on.
    Cycle,
}

impl PowerAction {
    /// The state the machine should reach.
    pub fn expected_state(self) -> PowerState {
        match self {
            PowerAction::On | PowerAction::Cycle => PowerState::On,
            PowerAction::Off => PowerState::Off,
        }
    }
}

/// Chooses the ResetType for `action` from what the BMC allows. Graceful variants are never
/// chosen for a cycle: a crashed OS does not answer them. When the BMC does not advertise its
/// allowable values, the standard first choice is used (Redfish then allows any standard value).
pub fn choose_reset(
    action: PowerAction,
    current: Option<&PowerState>,
    allowed: Option<&[String]>,
) -> Result<&'static str> {
    let preferences: &[&'static str] = match (action, current) {
        (PowerAction::On, _) | (PowerAction::Cycle, Some(PowerState::Off)) => &["On", "ForceOn"],
        (PowerAction::Off, _) => &["ForceOff", "GracefulShutdown"],
        (PowerAction::Cycle, _) => &["PowerCycle", "ForceRestart"],
    };
    match allowed {
        None => Ok(preferences[0]),
        Some(allowed) => preferences
            .iter()
            .find(|p| allowed.iter().any(|a| a == *p))
            .copied()
            .ok_or_else(|| RedfishError::Unsupported {
                what: format!(
                    "any of the resets {} (it allows {})",
                    preferences.join(", "),
                    allowed.join(", ")
                ),
            }),
    }
}

/// A one-time network boot source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NetworkBoot {
    #[default]
    Pxe,
    UefiHttp,
}

impl NetworkBoot {
    pub fn as_redfish(self) -> &'static str {
        match self {
            NetworkBoot::Pxe => "Pxe",
            NetworkBoot::UefiHttp => "UefiHttp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    Uefi,
    Legacy,
}

impl BootMode {
    pub fn as_redfish(self) -> &'static str {
        match self {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "Legacy",
        }
    }
}

/// The PATCH body that arms a one-time network boot. The mode is sent only when the BMC
/// reports one: BMCs without mode support reject the unknown property.
pub fn override_patch(
    target: NetworkBoot,
    mode: Option<BootMode>,
    current: &BootOverride,
) -> Result<Value> {
    if let Some(allowed) = &current.allowed_targets
        && !allowed.iter().any(|a| a == target.as_redfish())
    {
        return Err(RedfishError::Unsupported {
            what: format!(
                "booting from {} (allowed override targets: {})",
                target.as_redfish(),
                allowed.join(", ")
            ),
        });
    }
    let mut boot = serde_json::Map::new();
    boot.insert(
        "BootSourceOverrideTarget".into(),
        target.as_redfish().into(),
    );
    boot.insert("BootSourceOverrideEnabled".into(), "Once".into());
    if let (Some(mode), Some(_)) = (mode, &current.mode) {
        boot.insert("BootSourceOverrideMode".into(), mode.as_redfish().into());
    }
    Ok(serde_json::json!({ "Boot": boot }))
}

/// Whether the override read back from the BMC is the network boot recast asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverrideCheck {
    /// Target and mode as asked, once.
    Armed,
    /// Target and mode as asked, but the BMC reports `Continuous`. Accepted: some BMCs (and
    /// sushy-tools' emulator) report every override that way, and the machine still boots
    /// from the network; recast's boot service hands a machine with no armed attempt back to
    /// its local disk, so a lingering override costs one network round trip per boot, not a
    /// reimage.
    ArmedContinuous,
    NotArmed(String),
}

pub fn check_override(
    target: NetworkBoot,
    mode: Option<BootMode>,
    observed: Option<&BootOverride>,
) -> OverrideCheck {
    let Some(observed) = observed else {
        return OverrideCheck::NotArmed("the system no longer reports a Boot section".into());
    };
    if observed.target.as_deref() != Some(target.as_redfish()) {
        return OverrideCheck::NotArmed(format!(
            "BootSourceOverrideTarget is {}, not {}",
            observed.target.as_deref().unwrap_or("absent"),
            target.as_redfish()
        ));
    }
    if let (Some(want), Some(got)) = (mode, observed.mode.as_deref())
        && got != want.as_redfish()
    {
        return OverrideCheck::NotArmed(format!(
            "BootSourceOverrideMode is {got}, not {}",
            want.as_redfish()
        ));
    }
    match observed.enabled.as_deref() {
        Some("Once") => OverrideCheck::Armed,
        Some("Continuous") => OverrideCheck::ArmedContinuous,
        other => OverrideCheck::NotArmed(format!(
            "BootSourceOverrideEnabled is {}, not Once",
            other.unwrap_or("absent")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn system_choice() {
        let one = s(&["/redfish/v1/Systems/1"]);
        assert_eq!(choose_system(&one, None).unwrap(), "/redfish/v1/Systems/1");
        let two = s(&["/redfish/v1/Systems/a", "/redfish/v1/Systems/b"]);
        assert!(matches!(
            choose_system(&two, None),
            Err(RedfishError::AmbiguousSystem { count: 2, .. })
        ));
        assert_eq!(
            choose_system(&two, Some("b")).unwrap(),
            "/redfish/v1/Systems/b"
        );
        assert_eq!(
            choose_system(&two, Some("/redfish/v1/Systems/a/")).unwrap(),
            "/redfish/v1/Systems/a"
        );
        assert!(matches!(
            choose_system(&two, Some("c")),
            Err(RedfishError::NotFound { .. })
        ));
        assert!(matches!(
            choose_system(&[], None),
            Err(RedfishError::NotFound { .. })
        ));
        // A suffix match must be a whole path segment.
        assert!(choose_system(&s(&["/redfish/v1/Systems/System.Embedded.1"]), Some("1")).is_err());
    }

    #[test]
    fn reset_choice() {
        let sushy = s(&[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
        ]);
        let on = PowerState::On;
        let off = PowerState::Off;
        assert_eq!(
            choose_reset(PowerAction::Cycle, Some(&on), Some(&sushy)).unwrap(),
            "ForceRestart"
        );
        assert_eq!(
            choose_reset(PowerAction::Cycle, Some(&off), Some(&sushy)).unwrap(),
            "On"
        );
        assert_eq!(
            choose_reset(
                PowerAction::Cycle,
                Some(&on),
                Some(&s(&["PowerCycle", "ForceRestart"]))
            )
            .unwrap(),
            "PowerCycle"
        );
        assert_eq!(
            choose_reset(PowerAction::Cycle, None, None).unwrap(),
            "PowerCycle"
        );
        assert_eq!(
            choose_reset(PowerAction::Off, Some(&on), Some(&sushy)).unwrap(),
            "ForceOff"
        );
        assert_eq!(
            choose_reset(PowerAction::Off, Some(&on), Some(&s(&["GracefulShutdown"]))).unwrap(),
            "GracefulShutdown"
        );
        assert_eq!(
            choose_reset(PowerAction::On, Some(&off), Some(&s(&["ForceOn"]))).unwrap(),
            "ForceOn"
        );
        // Only graceful restarts: a crashed OS would never answer, so refuse.
        assert!(matches!(
            choose_reset(
                PowerAction::Cycle,
                Some(&on),
                Some(&s(&["GracefulRestart", "On"]))
            ),
            Err(RedfishError::Unsupported { .. })
        ));
        assert!(choose_reset(PowerAction::On, None, Some(&[])).is_err());
    }

    #[test]
    fn override_patches() {
        let with_mode = BootOverride {
            mode: Some("UEFI".into()),
            allowed_targets: Some(s(&["Pxe", "Hdd", "UefiHttp"])),
            ..Default::default()
        };
        assert_eq!(
            override_patch(NetworkBoot::Pxe, Some(BootMode::Uefi), &with_mode).unwrap(),
            json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
        );
        let no_mode = BootOverride::default();
        assert_eq!(
            override_patch(NetworkBoot::UefiHttp, Some(BootMode::Legacy), &no_mode).unwrap(),
            json!({"Boot": {"BootSourceOverrideTarget": "UefiHttp", "BootSourceOverrideEnabled": "Once"}})
        );
        let no_http = BootOverride {
            allowed_targets: Some(s(&["Pxe", "Hdd"])),
            ..Default::default()
        };
        assert!(matches!(
            override_patch(NetworkBoot::UefiHttp, None, &no_http),
            Err(RedfishError::Unsupported { .. })
        ));
    }

    #[test]
    fn override_checks() {
        let ov = |t: &str, e: &str, m: Option<&str>| BootOverride {
            target: Some(t.into()),
            enabled: Some(e.into()),
            mode: m.map(str::to_string),
            allowed_targets: None,
        };
        let uefi = Some(BootMode::Uefi);
        assert_eq!(
            check_override(
                NetworkBoot::Pxe,
                uefi,
                Some(&ov("Pxe", "Once", Some("UEFI")))
            ),
            OverrideCheck::Armed
        );
        assert_eq!(
            check_override(
                NetworkBoot::Pxe,
                uefi,
                Some(&ov("Pxe", "Continuous", Some("UEFI")))
            ),
            OverrideCheck::ArmedContinuous
        );
        assert_eq!(
            check_override(NetworkBoot::Pxe, uefi, Some(&ov("Pxe", "Once", None))),
            OverrideCheck::Armed
        );
        assert!(matches!(
            check_override(
                NetworkBoot::Pxe,
                uefi,
                Some(&ov("Pxe", "Disabled", Some("UEFI")))
            ),
            OverrideCheck::NotArmed(_)
        ));
        assert!(matches!(
            check_override(
                NetworkBoot::Pxe,
                uefi,
                Some(&ov("Hdd", "Once", Some("UEFI")))
            ),
            OverrideCheck::NotArmed(_)
        ));
        assert!(matches!(
            check_override(
                NetworkBoot::Pxe,
                uefi,
                Some(&ov("Pxe", "Once", Some("Legacy")))
            ),
            OverrideCheck::NotArmed(_)
        ));
        assert!(matches!(
            check_override(NetworkBoot::Pxe, uefi, None),
            OverrideCheck::NotArmed(_)
        ));
        let no_enabled = BootOverride {
            target: Some("Pxe".into()),
            ..Default::default()
        };
        assert!(matches!(
            check_override(NetworkBoot::Pxe, None, Some(&no_enabled)),
            OverrideCheck::NotArmed(_)
        ));
    }

    #[test]
    fn system_parsing() {
        let v = json!({
            "Id": "1", "@odata.id": "/redfish/v1/Systems/1", "PowerState": "On",
            "Boot": {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled",
                     "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd"]},
            "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                        "ResetType@Redfish.AllowableValues": ["On", "ForceOff"]}},
            "LogServices": {"@odata.id": "/redfish/v1/Systems/1/LogServices"},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}]},
            "@odata.etag": "W/\"abc\""
        });
        let sys = parse_system("u", &v, None).unwrap();
        assert_eq!(sys.power_state, Some(PowerState::On));
        assert_eq!(sys.reset_allowed, Some(s(&["On", "ForceOff"])));
        assert_eq!(sys.boot.unwrap().allowed_targets, Some(s(&["Pxe", "Hdd"])));
        assert_eq!(sys.etag.as_deref(), Some("W/\"abc\""));
        assert_eq!(sys.managers, s(&["/redfish/v1/Managers/1"]));
        // The header ETag wins over the body's.
        assert_eq!(
            parse_system("u", &v, Some("\"h\"".into()))
                .unwrap()
                .etag
                .as_deref(),
            Some("\"h\"")
        );

        // Mistyped and missing properties are typed errors naming the property.
        for bad in [
            json!({"Id": 1}),
            json!({"Name": "no id"}),
            json!({"Id": "1", "PowerState": 3}),
            json!({"Id": "1", "Boot": "Pxe"}),
            json!({"Id": "1", "Boot": {"BootSourceOverrideTarget": ["Pxe"]}}),
            json!({"Id": "1", "Actions": {"#ComputerSystem.Reset": {"ResetType@Redfish.AllowableValues": "On"}}}),
            json!({"Id": "1", "Actions": {"#ComputerSystem.Reset": {"ResetType@Redfish.AllowableValues": [1]}}}),
        ] {
            assert!(
                matches!(
                    parse_system("u", &bad, None),
                    Err(RedfishError::MissingProperty { .. })
                ),
                "{bad}"
            );
        }
        assert!(collection_members("u", &json!({"Members": [{"x": 1}]})).is_err());
        assert!(collection_members("u", &json!({"Members": "no"})).is_err());
    }

    #[test]
    fn action_info() {
        let v = json!({"Parameters": [{"Name": "ResetType", "AllowableValues": ["On", "ForceRestart"]}]});
        assert_eq!(
            action_info_reset_types("u", &v).unwrap(),
            Some(s(&["On", "ForceRestart"]))
        );
        assert_eq!(action_info_reset_types("u", &json!({})).unwrap(), None);
    }
}
