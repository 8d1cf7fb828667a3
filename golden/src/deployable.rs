//! Whether a golden image can be deployed at all, from its offline registry: generalized by
//! sysprep (so Setup runs specialize and oobeSystem, which is where the computer name, the
//! join and the accounts of the provisioning profile are applied), the recast agent installed
//! as a service started at boot with the configuration the imaging environment writes (so the
//! machine reports back and is held from updates), and its registry agreeing with the WIM's XML
//! on edition and architecture.
//!
//! Pure: hive bytes in ([`read_software`], [`read_system`]), facts out, [`checks`] judges them.
//! The shell that extracts the hives from the WIM is [`crate::deep`].

use recast_core::regf::read::{Hive, ReadError};
use serde::{Deserialize, Serialize};

use crate::servicing::Check;
use crate::xml::ImageInfo;

/// The offline hives, as paths inside the image.
pub const SOFTWARE_HIVE: &str = "Windows/System32/config/SOFTWARE";
pub const SYSTEM_HIVE: &str = "Windows/System32/config/SYSTEM";
/// Larger than the SOFTWARE hive of a real image (a fully serviced one is 50–200 MiB). It is
/// also the largest file the deep-check sandbox lets be extracted (`sandbox::Limits`), so a
/// larger hive is refused the same way in and out of the sandbox.
pub const MAX_HIVE_BYTES: u64 = 256 << 20;
/// Agent services kept from one hive (a real image has one; more is reported, not collected).
const MAX_AGENT_SERVICES: usize = 16;
/// The longest command line kept (Windows' own limit is 32767 characters).
const MAX_IMAGE_PATH: usize = 32_767;
/// What sysprep /generalize /oobe leaves in `SOFTWARE\...\Setup\State\ImageState`.
pub const GENERALIZED: &str = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE";
const SETUP_STATE_KEY: &str = r"Microsoft\Windows\CurrentVersion\Setup\State";
const CURRENT_VERSION_KEY: &str = r"Microsoft\Windows NT\CurrentVersion";
/// A service's Start value: loaded at boot by the service control manager.
const SERVICE_AUTO_START: u32 = 2;

/// How one hive was read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum HiveState {
    #[default]
    Read,
    /// The image has no such file.
    Absent,
    /// Larger than [`MAX_HIVE_BYTES`]: not read.
    TooLarge {
        bytes: u64,
    },
    Unreadable {
        why: String,
    },
}

/// A service whose command line runs recast-agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentService {
    pub name: String,
    pub image_path: String,
    /// The Start value (2 = automatic, 3 = manual, 4 = disabled); None when absent.
    pub start: Option<u32>,
}

/// What the image's registry says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentFacts {
    pub software: HiveState,
    pub system: HiveState,
    /// `SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State\ImageState`.
    pub image_state: Option<String>,
    /// `SOFTWARE\Microsoft\Windows NT\CurrentVersion\EditionID`.
    pub edition_id: Option<String>,
    /// `PROCESSOR_ARCHITECTURE` of the current control set's environment (AMD64, ARM64, x86).
    pub processor_architecture: Option<String>,
    pub agent_services: Vec<AgentService>,
}

/// ImageState and EditionID from the SOFTWARE hive.
pub fn read_software(bytes: &[u8]) -> Result<(Option<String>, Option<String>), ReadError> {
    let hive = Hive::parse(bytes)?;
    let text = |key: &str, value: &str| -> Result<Option<String>, ReadError> {
        Ok(match hive.key(key)? {
            Some(k) => hive.value(k, value)?.and_then(|v| v.text()),
            None => None,
        })
    };
    Ok((
        text(SETUP_STATE_KEY, "ImageState")?,
        text(CURRENT_VERSION_KEY, "EditionID")?,
    ))
}

/// PROCESSOR_ARCHITECTURE and the services that run recast-agent, from the SYSTEM hive's
/// current control set (`Select\Current`; ControlSet001 when it says nothing).
pub fn read_system(bytes: &[u8]) -> Result<(Option<String>, Vec<AgentService>), ReadError> {
    let hive = Hive::parse(bytes)?;
    let current = match hive.key("Select")? {
        Some(k) => hive.value(k, "Current")?.and_then(|v| v.dword()),
        None => None,
    }
    .unwrap_or(1);
    let set = format!("ControlSet{current:03}");
    let arch = match hive.key(&format!(r"{set}\Control\Session Manager\Environment"))? {
        Some(k) => hive
            .value(k, "PROCESSOR_ARCHITECTURE")?
            .and_then(|v| v.text()),
        None => None,
    };
    let mut services = Vec::new();
    if let Some(all) = hive.key(&format!(r"{set}\Services"))? {
        for service in hive.subkeys(all)? {
            let Some(path) = hive.value(service, "ImagePath")?.and_then(|v| v.text()) else {
                continue;
            };
            if path.len() > MAX_IMAGE_PATH || !path.to_ascii_lowercase().contains("recast-agent") {
                continue;
            }
            if services.len() == MAX_AGENT_SERVICES {
                break;
            }
            services.push(AgentService {
                name: hive.name(service)?,
                image_path: path,
                start: hive.value(service, "Start")?.and_then(|v| v.dword()),
            });
        }
    }
    Ok((arch, services))
}

/// The arguments of a Windows command line, split as the C runtime does for the common cases
/// (spaces separate, double quotes group, quotes removed).
fn arguments(command_line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in command_line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' | '\t' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            c => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(current);
    }
    out
}

/// The `--agent-config` a `recast-agent run` command line names, if it runs the agent.
fn agent_config_of(image_path: &str) -> Result<String, &'static str> {
    let args = arguments(image_path);
    if !args.iter().skip(1).any(|a| a == "run") {
        return Err("does not run `recast-agent run`");
    }
    let mut iter = args.iter();
    while let Some(a) = iter.next() {
        if a == "--agent-config" {
            return iter
                .next()
                .cloned()
                .ok_or("names no file after --agent-config");
        }
        if let Some(v) = a.strip_prefix("--agent-config=") {
            return Ok(v.to_string());
        }
    }
    Err("has no --agent-config")
}

/// Whether `path` is where the imaging environment writes the agent configuration.
fn is_agent_config_path(path: &str) -> bool {
    let want = recast_core::imaging::AGENT_CONFIG_WINDOWS_PATH.to_ascii_lowercase();
    let have = path.to_ascii_lowercase();
    have == want || have == r"%programdata%\recast\agent.json"
}

fn hive_problem(which: &str, path: &str, state: &HiveState) -> Option<String> {
    let inner = path.replace('/', "\\");
    match state {
        HiveState::Read => None,
        HiveState::Absent => Some(format!(
            "the image has no {inner}: it is not an installed Windows (capture the reference machine's Windows volume)"
        )),
        HiveState::TooLarge { bytes } => Some(format!(
            "the {which} hive is {bytes} bytes, more than any real one ({MAX_HIVE_BYTES}): not read; the image is damaged or hostile"
        )),
        HiveState::Unreadable { why } => Some(format!(
            "the {which} hive ({inner}) cannot be read: {why}; capture the image again after `sysprep /generalize /oobe /shutdown`"
        )),
    }
}

/// The deployability checks: generalized, agent service, registry edition and architecture.
pub fn checks(image: &ImageInfo, facts: &DeploymentFacts) -> Vec<Check> {
    let mut out = Vec::new();
    let fail = |name, message| Check {
        name,
        passed: false,
        message,
    };
    let pass = |name, message| Check {
        name,
        passed: true,
        message,
    };

    match hive_problem("SOFTWARE", SOFTWARE_HIVE, &facts.software) {
        Some(p) => {
            out.push(fail("generalized", p.clone()));
            out.push(fail("registry-edition", p));
        }
        None => {
            out.push(match facts.image_state.as_deref() {
                Some(GENERALIZED) => pass(
                    "generalized",
                    format!("generalized by sysprep (ImageState {GENERALIZED})"),
                ),
                Some(state) => fail(
                    "generalized",
                    format!(
                        "the image is not generalized (ImageState is {state}, not {GENERALIZED}): Setup would skip specialize and oobeSystem, so no computer name, join or account of the provisioning profile would be applied; run `sysprep /generalize /oobe /shutdown` on the reference machine and capture it again"
                    ),
                ),
                None => fail(
                    "generalized",
                    format!(
                        "the image records no ImageState (SOFTWARE\\{SETUP_STATE_KEY}): it was never prepared with sysprep; run `sysprep /generalize /oobe /shutdown` on the reference machine and capture it again"
                    ),
                ),
            });
            out.push(match (facts.edition_id.as_deref(), image.edition.as_deref()) {
                (Some(reg), Some(xml)) if reg.eq_ignore_ascii_case(xml) => pass(
                    "registry-edition",
                    format!("the registry's edition {reg} matches the XML"),
                ),
                (Some(reg), Some(xml)) => fail(
                    "registry-edition",
                    format!(
                        "the WIM's XML says edition {xml} but the image's registry says {reg}: the XML was edited or belongs to another capture; capture the image again"
                    ),
                ),
                (Some(reg), None) => pass(
                    "registry-edition",
                    format!("the registry's edition is {reg} (the XML records none)"),
                ),
                (None, _) => fail(
                    "registry-edition",
                    format!(
                        "the image's registry records no EditionID (SOFTWARE\\{CURRENT_VERSION_KEY}): it is not an installed Windows"
                    ),
                ),
            });
        }
    }

    match hive_problem("SYSTEM", SYSTEM_HIVE, &facts.system) {
        Some(p) => {
            out.push(fail("agent-service", p.clone()));
            out.push(fail("registry-arch", p));
        }
        None => {
            out.push(agent_service_check(&facts.agent_services));
            let reg = facts
                .processor_architecture
                .as_deref()
                .map(|a| a.to_ascii_lowercase());
            out.push(match (reg.as_deref(), image.arch()) {
                (Some(r), Some(x)) if r == x => pass(
                    "registry-arch",
                    format!("the registry's architecture {r} matches the XML"),
                ),
                (Some(r), Some(x)) => fail(
                    "registry-arch",
                    format!(
                        "the WIM's XML says architecture {x} but the image's registry says {r}: the XML was edited or belongs to another capture; capture the image again"
                    ),
                ),
                (Some(r), None) => pass(
                    "registry-arch",
                    format!("the registry's architecture is {r} (the XML records none)"),
                ),
                (None, _) => fail(
                    "registry-arch",
                    "the image's registry records no PROCESSOR_ARCHITECTURE (SYSTEM\\ControlSet…\\Control\\Session Manager\\Environment): it is not an installed Windows".into(),
                ),
            });
        }
    }
    out
}

/// The command a site installs the agent with on the reference machine, before sysprep.
pub fn install_command() -> String {
    format!(
        r#"sc.exe create recast-agent start= auto binPath= "\"C:\Program Files\recast\recast-agent.exe\" run --agent-config {}""#,
        recast_core::imaging::AGENT_CONFIG_WINDOWS_PATH
    )
}

fn agent_service_check(services: &[AgentService]) -> Check {
    let want = recast_core::imaging::AGENT_CONFIG_WINDOWS_PATH;
    let mut problems = Vec::new();
    for s in services {
        let config = match agent_config_of(&s.image_path) {
            Ok(c) => c,
            Err(why) => {
                problems.push(format!(
                    "service {} runs recast-agent but {why} ({}): change its binPath to `run --agent-config {want}`",
                    s.name, s.image_path
                ));
                continue;
            }
        };
        if !is_agent_config_path(&config) {
            problems.push(format!(
                "service {} reads the agent configuration from {config}, but the imaging environment writes it to {want}: change its binPath",
                s.name
            ));
            continue;
        }
        if s.start != Some(SERVICE_AUTO_START) {
            problems.push(format!(
                "service {} is not started at boot (Start is {}): run `sc.exe config {} start= auto` on the reference machine",
                s.name,
                s.start.map_or("absent".into(), |v| v.to_string()),
                s.name
            ));
            continue;
        }
        return Check {
            name: "agent-service",
            passed: true,
            message: format!(
                "service {} runs recast-agent with --agent-config {config}, started at boot",
                s.name
            ),
        };
    }
    let message = if problems.is_empty() {
        format!(
            "no service in the image runs recast-agent: every machine imaged from it would come back unseen (no reports, no update hold, the attempt never confirmed); install it on the reference machine before sysprep: {}",
            install_command()
        )
    } else {
        problems.join("; ")
    };
    Check {
        name: "agent-service",
        passed: false,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_core::regf::{Key, REG_DWORD, REG_EXPAND_SZ, REG_SZ, hive, reg_sz};

    fn image() -> ImageInfo {
        ImageInfo {
            edition: Some("Enterprise".into()),
            arch_code: Some(9),
            ..Default::default()
        }
    }

    fn good() -> DeploymentFacts {
        DeploymentFacts {
            image_state: Some(GENERALIZED.into()),
            edition_id: Some("Enterprise".into()),
            processor_architecture: Some("AMD64".into()),
            agent_services: vec![AgentService {
                name: "recast-agent".into(),
                image_path: r#""C:\Program Files\recast\recast-agent.exe" run --agent-config C:\ProgramData\recast\agent.json"#.into(),
                start: Some(2),
            }],
            ..Default::default()
        }
    }

    fn failed(facts: &DeploymentFacts) -> Vec<(&'static str, String)> {
        checks(&image(), facts)
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| (c.name, c.message))
            .collect()
    }

    #[test]
    fn a_generalized_image_with_the_agent_service_passes_every_check() {
        let all = checks(&image(), &good());
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|c| c.passed), "{all:#?}");
    }

    #[test]
    fn each_undeployable_image_is_refused_saying_what_to_do() {
        let cases: Vec<(DeploymentFacts, &str, &str)> = vec![
            (
                DeploymentFacts {
                    image_state: Some("IMAGE_STATE_COMPLETE".into()),
                    ..good()
                },
                "generalized",
                "run `sysprep /generalize /oobe /shutdown`",
            ),
            (
                DeploymentFacts {
                    image_state: None,
                    ..good()
                },
                "generalized",
                "never prepared with sysprep",
            ),
            (
                DeploymentFacts {
                    agent_services: vec![],
                    ..good()
                },
                "agent-service",
                "sc.exe create recast-agent start= auto",
            ),
            (
                DeploymentFacts {
                    agent_services: vec![AgentService {
                        image_path: r"C:\recast\recast-agent.exe run --endpoint kiosk-01".into(),
                        ..good().agent_services[0].clone()
                    }],
                    ..good()
                },
                "agent-service",
                "has no --agent-config",
            ),
            (
                DeploymentFacts {
                    agent_services: vec![AgentService {
                        image_path: r"C:\recast\recast-agent.exe run --agent-config D:\agent.json"
                            .into(),
                        ..good().agent_services[0].clone()
                    }],
                    ..good()
                },
                "agent-service",
                "writes it to C:\\ProgramData\\recast\\agent.json",
            ),
            (
                DeploymentFacts {
                    agent_services: vec![AgentService {
                        start: Some(4),
                        ..good().agent_services[0].clone()
                    }],
                    ..good()
                },
                "agent-service",
                "start= auto",
            ),
            (
                DeploymentFacts {
                    edition_id: Some("Professional".into()),
                    ..good()
                },
                "registry-edition",
                "XML says edition Enterprise but the image's registry says Professional",
            ),
            (
                DeploymentFacts {
                    processor_architecture: Some("ARM64".into()),
                    ..good()
                },
                "registry-arch",
                "XML says architecture amd64 but the image's registry says arm64",
            ),
            (
                DeploymentFacts {
                    software: HiveState::Absent,
                    ..good()
                },
                "generalized",
                "not an installed Windows",
            ),
            (
                DeploymentFacts {
                    system: HiveState::Unreadable {
                        why: "not a registry hive".into(),
                    },
                    ..good()
                },
                "agent-service",
                "cannot be read: not a registry hive",
            ),
        ];
        for (facts, check, says) in cases {
            let failed = failed(&facts);
            assert!(
                failed.iter().any(|(n, m)| *n == check && m.contains(says)),
                "{check} should fail saying {says:?}: {failed:#?}"
            );
        }
    }

    #[test]
    fn command_lines_are_split_as_windows_does() {
        assert_eq!(
            agent_config_of(
                r#""C:\Program Files\recast\recast-agent.exe" run --agent-config "C:\ProgramData\recast\agent.json""#
            ),
            Ok(r"C:\ProgramData\recast\agent.json".into())
        );
        assert_eq!(
            agent_config_of(r"recast-agent.exe run --agent-config=%ProgramData%\recast\agent.json"),
            Ok(r"%ProgramData%\recast\agent.json".into())
        );
        assert!(is_agent_config_path(r"%ProgramData%\recast\agent.json"));
        assert_eq!(
            agent_config_of("recast-agent.exe run --agent-config"),
            Err("names no file after --agent-config")
        );
        assert_eq!(
            agent_config_of("recast-agent.exe simulate"),
            Err("does not run `recast-agent run`")
        );
    }

    #[test]
    fn facts_come_from_the_hives_current_control_set() {
        let software = hive(
            &Key::new("ROOT").subkey(
                Key::new("Microsoft")
                    .subkey(
                        Key::new("Windows").subkey(Key::new("CurrentVersion").subkey(
                            Key::new("Setup").subkey(Key::new("State").value(
                                "ImageState",
                                REG_SZ,
                                reg_sz(GENERALIZED),
                            )),
                        )),
                    )
                    .subkey(
                        Key::new("Windows NT").subkey(Key::new("CurrentVersion").value(
                            "EditionID",
                            REG_SZ,
                            reg_sz("Enterprise"),
                        )),
                    ),
            ),
        )
        .unwrap();
        assert_eq!(
            read_software(&software).unwrap(),
            (Some(GENERALIZED.into()), Some("Enterprise".into()))
        );
        let set = |arch: &str, path: &str| {
            Key::new("Services")
                .subkey(Key::new("Dhcp").value(
                    "ImagePath",
                    REG_EXPAND_SZ,
                    reg_sz(r"%SystemRoot%\system32\svchost.exe -k LocalService"),
                ))
                .subkey(
                    Key::new("recast-agent")
                        .value("ImagePath", REG_EXPAND_SZ, reg_sz(path))
                        .value("Start", REG_DWORD, 2u32.to_le_bytes().to_vec()),
                )
                .pipe(|services| {
                    Key::new("x")
                        .subkey(services)
                        .subkey(
                            Key::new("Control").subkey(Key::new("Session Manager").subkey(
                                Key::new("Environment").value(
                                    "PROCESSOR_ARCHITECTURE",
                                    REG_SZ,
                                    reg_sz(arch),
                                ),
                            )),
                        )
                })
        };
        let mut one = set("x86", "recast-agent.exe old");
        one.name = "ControlSet001".into();
        let mut two = set("AMD64", "recast-agent.exe run --agent-config x");
        two.name = "ControlSet002".into();
        let system = hive(
            &Key::new("ROOT")
                .subkey(Key::new("Select").value("Current", REG_DWORD, 2u32.to_le_bytes().to_vec()))
                .subkey(one)
                .subkey(two),
        )
        .unwrap();
        let (arch, services) = read_system(&system).unwrap();
        assert_eq!(arch.as_deref(), Some("AMD64"));
        assert_eq!(services.len(), 1);
        assert_eq!(
            services[0].image_path,
            "recast-agent.exe run --agent-config x"
        );
        assert_eq!(services[0].start, Some(2));
        assert!(read_system(b"regf but short").is_err());
    }

    trait Pipe: Sized {
        fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
            f(self)
        }
    }
    impl Pipe for Key {}
}
