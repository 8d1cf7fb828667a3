//! A policy's provisioning profile made concrete for one machine's first start: the site's
//! defaults filled in, the Secrets' values read, and whether the result holds a secret (then
//! the boot service serves it only over HTTPS).
//!
//! [`secrets_needed`] and [`resolve`] are pure; the boot service reads the Secrets they name
//! and hands them back in.

use std::collections::BTreeMap;

use recast_crds::policy::{Join, ProvisioningProfile, SecretKeyRef};
use serde::Serialize;

use crate::bmc::redfish::SecretData;

/// The offline domain join file as Windows names it while it runs (the imaging environment
/// writes it to `\Windows\Panther`).
fn offline_join_windows_path() -> String {
    format!(
        r"%WINDIR%\Panther\{}",
        recast_core::imaging::OFFLINE_DOMAIN_JOIN_FILE
    )
}

/// The Secrets of the policy's namespace a profile reads, by name, each with the keys it needs.
pub fn secrets_needed(profile: &ProvisioningProfile) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |r: &SecretKeyRef| out.entry(r.name.clone()).or_default().push(r.key.clone());
    if let Some(a) = &profile.local_account {
        add(&a.password_secret_ref);
    }
    if let Some(r) = &profile.administrator_password_secret_ref {
        add(r);
    }
    if let Some(j) = &profile.join {
        if let Some(d) = &j.domain {
            for key in ["username", "password"] {
                add(&SecretKeyRef {
                    name: d.credentials_secret_ref.name.clone(),
                    key: key.into(),
                });
            }
        }
        if let Some(o) = &j.offline_domain_join {
            add(&o.blob_secret_ref);
        }
    }
    for keys in out.values_mut() {
        keys.sort();
        keys.dedup();
    }
    out
}

/// The site's own settings, used where a profile says nothing.
#[derive(Clone, Debug)]
pub struct SiteDefaults {
    pub locale: String,
    pub time_zone: String,
}

/// Everything unattend.xml says besides the computer name, ready for the template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Provisioning {
    pub locale: String,
    pub time_zone: String,
    pub local_account: Option<AccountView>,
    /// In unattend's `PlainText=false` form.
    pub administrator_password: Option<String>,
    pub join: JoinView,
    pub first_logon_commands: Vec<CommandView>,
    /// The specialize pass's commands (the offline domain join, then removing its file).
    pub specialize_commands: Vec<CommandView>,
    /// The offline domain join file, as djoin saved it (written next to unattend.xml).
    #[serde(skip)]
    pub offline_join_blob: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountView {
    pub name: String,
    /// "Administrators" or "Users".
    pub group: &'static str,
    /// In unattend's `PlainText=false` form.
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JoinView {
    Workgroup {
        name: String,
    },
    /// Joined in specialize with these credentials (Setup reads them in plain text and removes
    /// them from its cached copy of the file).
    Domain {
        name: String,
        ou: Option<String>,
        /// The account's own domain: from `DOMAIN\user` or `user@domain`, else the join domain.
        user_domain: String,
        username: String,
        password: String,
    },
    /// Joined from the blob the specialize pass loads with djoin.
    Offline,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommandView {
    pub order: usize,
    pub command_line: String,
    pub description: String,
}

impl Provisioning {
    /// True when the rendered unattend.xml (or the offline join file) carries a credential.
    pub fn holds_secret(&self) -> bool {
        self.local_account.is_some()
            || self.administrator_password.is_some()
            || !matches!(self.join, JoinView::Workgroup { .. })
    }
}

/// Why a profile cannot be made concrete: each says what to fix.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProvisioningError {
    #[error(
        "Secret {namespace}/{name} named by the policy's provisioning does not exist; create it (kubectl create secret generic, or recastctl apply of a v1 Secret)"
    )]
    SecretMissing { namespace: String, name: String },
    #[error(
        "Secret {namespace}/{name} has no key {key:?}, which the policy's provisioning needs; add it"
    )]
    KeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "Secret {namespace}/{name} key {key:?} is empty or not UTF-8 text; a password or user name must be text"
    )]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "Secret {namespace}/{name} key {key:?} holds an offline domain join file that is empty or larger than 64 KiB; save it again with djoin /provision ... /savefile"
    )]
    BadBlob {
        namespace: String,
        name: String,
        key: String,
    },
}

/// The largest offline domain join file accepted (djoin writes a few KiB).
const MAX_BLOB: usize = 64 * 1024;

/// The profile for one machine: `secrets` holds the Secrets [`secrets_needed`] named that exist.
pub fn resolve(
    namespace: &str,
    profile: Option<&ProvisioningProfile>,
    site: &SiteDefaults,
    secrets: &BTreeMap<String, SecretData>,
) -> Result<Provisioning, ProvisioningError> {
    let empty = ProvisioningProfile::default();
    let profile = profile.unwrap_or(&empty);
    let raw = |r: &SecretKeyRef| -> Result<&[u8], ProvisioningError> {
        let data = secrets
            .get(&r.name)
            .ok_or_else(|| ProvisioningError::SecretMissing {
                namespace: namespace.into(),
                name: r.name.clone(),
            })?;
        data.get(&r.key)
            .map(Vec::as_slice)
            .ok_or_else(|| ProvisioningError::KeyMissing {
                namespace: namespace.into(),
                name: r.name.clone(),
                key: r.key.clone(),
            })
    };
    let text = |r: &SecretKeyRef| -> Result<String, ProvisioningError> {
        let bytes = raw(r)?;
        // A trailing newline is what `echo` and most editors leave in a Secret file.
        match std::str::from_utf8(bytes).map(|s| s.trim_end_matches(['\r', '\n'])) {
            Ok(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(ProvisioningError::NotText {
                namespace: namespace.into(),
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        }
    };
    let local_account = match &profile.local_account {
        Some(a) => Some(AccountView {
            name: a.name.clone(),
            group: if a.administrator {
                "Administrators"
            } else {
                "Users"
            },
            password: obscure_password(&text(&a.password_secret_ref)?, "Password"),
        }),
        None => None,
    };
    let administrator_password = match &profile.administrator_password_secret_ref {
        Some(r) => Some(obscure_password(&text(r)?, "AdministratorPassword")),
        None => None,
    };
    let mut offline_join_blob = None;
    let mut specialize_commands = Vec::new();
    let join = match profile.join.as_ref() {
        None => JoinView::Workgroup {
            name: "WORKGROUP".into(),
        },
        Some(Join {
            domain: Some(d), ..
        }) => {
            let creds = |key: &str| SecretKeyRef {
                name: d.credentials_secret_ref.name.clone(),
                key: key.into(),
            };
            let (user_domain, username) = split_account(&text(&creds("username"))?, &d.name);
            JoinView::Domain {
                name: d.name.clone(),
                ou: d.organizational_unit.clone(),
                user_domain,
                username,
                password: text(&creds("password"))?,
            }
        }
        Some(Join {
            offline_domain_join: Some(o),
            ..
        }) => {
            let blob = raw(&o.blob_secret_ref)?;
            if blob.is_empty() || blob.len() > MAX_BLOB {
                return Err(ProvisioningError::BadBlob {
                    namespace: namespace.into(),
                    name: o.blob_secret_ref.name.clone(),
                    key: o.blob_secret_ref.key.clone(),
                });
            }
            offline_join_blob = Some(blob.to_vec());
            // djoin's offline request in specialize (as SYSTEM, before the reboot into OOBE:
            // the join takes effect on that boot), then the file goes: it holds the
            // machine account's password.
            specialize_commands = vec![
                CommandView {
                    order: 1,
                    command_line: format!(
                        r"cmd.exe /c djoin.exe /requestODJ /loadfile {} /windowspath %WINDIR% /localos",
                        offline_join_windows_path()
                    ),
                    description: "recast: offline domain join".into(),
                },
                CommandView {
                    order: 2,
                    command_line: format!(r"cmd.exe /c del /f /q {}", offline_join_windows_path()),
                    description: "recast: remove the offline domain join file".into(),
                },
            ];
            JoinView::Offline
        }
        Some(Join {
            workgroup: Some(w), ..
        }) => JoinView::Workgroup { name: w.clone() },
        // Admission refuses a join with none of the three.
        Some(_) => JoinView::Workgroup {
            name: "WORKGROUP".into(),
        },
    };
    Ok(Provisioning {
        locale: profile
            .locale
            .clone()
            .unwrap_or_else(|| site.locale.clone()),
        time_zone: profile
            .time_zone
            .clone()
            .unwrap_or_else(|| site.time_zone.clone()),
        local_account,
        administrator_password,
        join,
        first_logon_commands: profile
            .first_logon_commands
            .iter()
            .enumerate()
            .map(|(i, c)| CommandView {
                order: i + 1,
                command_line: c.command_line.clone(),
                description: c.description.clone().unwrap_or_default(),
            })
            .collect(),
        specialize_commands,
        offline_join_blob,
    })
}

/// `DOMAIN\user` and `user@domain.fqdn` name their own domain; a bare user is the join
/// domain's.
fn split_account(account: &str, join_domain: &str) -> (String, String) {
    if let Some((domain, user)) = account.split_once('\\') {
        return (domain.to_string(), user.to_string());
    }
    if let Some((user, domain)) = account.rsplit_once('@') {
        return (domain.to_string(), user.to_string());
    }
    (join_domain.to_string(), account.to_string())
}

/// unattend.xml's `PlainText=false` form of a password: base64 of the UTF-16LE text of the
/// password followed by the element's name (`Password`, `AdministratorPassword`). It only keeps
/// the password out of casual sight; the file is served only over HTTPS.
pub fn obscure_password(password: &str, element: &str) -> String {
    let text = format!("{password}{element}");
    let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    super::render::base64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::common::SecretRef;
    use recast_crds::policy::{
        DomainJoin, FirstLogonCommand, LocalAccount, OfflineDomainJoin, SecretKeyRef,
    };

    fn site() -> SiteDefaults {
        SiteDefaults {
            locale: "en-US".into(),
            time_zone: "UTC".into(),
        }
    }

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    fn secrets(entries: &[(&str, &str, &[u8])]) -> BTreeMap<String, SecretData> {
        let mut out: BTreeMap<String, SecretData> = BTreeMap::new();
        for (name, k, v) in entries {
            out.entry(name.to_string())
                .or_default()
                .insert(k.to_string(), v.to_vec());
        }
        out
    }

    fn join(workgroup: Option<&str>, domain: bool, offline: bool) -> Join {
        Join {
            workgroup: workgroup.map(Into::into),
            domain: domain.then(|| DomainJoin {
                name: "corp.example.com".into(),
                organizational_unit: Some("OU=Kiosks,DC=corp,DC=example,DC=com".into()),
                credentials_secret_ref: SecretRef {
                    name: "join".into(),
                },
            }),
            offline_domain_join: offline.then(|| OfflineDomainJoin {
                blob_secret_ref: key("odj", "blob"),
            }),
        }
    }

    #[test]
    fn no_profile_is_a_workgroup_machine_with_the_sites_settings_and_no_secret() {
        let p = resolve("ns", None, &site(), &BTreeMap::new()).unwrap();
        assert_eq!(
            p.join,
            JoinView::Workgroup {
                name: "WORKGROUP".into()
            }
        );
        assert_eq!((p.locale.as_str(), p.time_zone.as_str()), ("en-US", "UTC"));
        assert!(!p.holds_secret());
        assert!(secrets_needed(&ProvisioningProfile::default()).is_empty());
    }

    #[test]
    fn a_profile_overrides_the_site_and_names_each_secret_key_once() {
        let profile = ProvisioningProfile {
            locale: Some("de-DE".into()),
            time_zone: Some("W. Europe Standard Time".into()),
            local_account: Some(LocalAccount {
                name: "kiosk".into(),
                administrator: false,
                password_secret_ref: key("accounts", "kiosk"),
            }),
            administrator_password_secret_ref: Some(key("accounts", "admin")),
            join: Some(join(None, true, false)),
            first_logon_commands: vec![FirstLogonCommand {
                command_line: "cmd /c echo hi".into(),
                description: None,
            }],
        };
        let needed = secrets_needed(&profile);
        assert_eq!(
            needed,
            BTreeMap::from([
                ("accounts".to_string(), vec!["admin".into(), "kiosk".into()]),
                (
                    "join".to_string(),
                    vec!["password".into(), "username".into()]
                ),
            ])
        );
        let s = secrets(&[
            ("accounts", "kiosk", b"Kiosk-Pass1\n"),
            ("accounts", "admin", b"P@ss"),
            ("join", "username", b"CORP\\joiner"),
            ("join", "password", b"J0in!"),
        ]);
        let p = resolve("ns", Some(&profile), &site(), &s).unwrap();
        assert_eq!(p.locale, "de-DE");
        assert_eq!(p.time_zone, "W. Europe Standard Time");
        let account = p.local_account.clone().unwrap();
        assert_eq!(account.group, "Users");
        // The trailing newline of the Secret file is not part of the password.
        assert_eq!(
            account.password,
            obscure_password("Kiosk-Pass1", "Password")
        );
        assert_eq!(
            p.administrator_password.as_deref(),
            Some("UABAAHMAcwBBAGQAbQBpAG4AaQBzAHQAcgBhAHQAbwByAFAAYQBzAHMAdwBvAHIAZAA=")
        );
        assert_eq!(
            p.join,
            JoinView::Domain {
                name: "corp.example.com".into(),
                ou: Some("OU=Kiosks,DC=corp,DC=example,DC=com".into()),
                user_domain: "CORP".into(),
                username: "joiner".into(),
                password: "J0in!".into(),
            }
        );
        assert_eq!(p.first_logon_commands[0].order, 1);
        assert!(p.holds_secret());
        assert!(p.specialize_commands.is_empty());
    }

    #[test]
    fn join_accounts_name_their_own_domain_or_the_join_domain() {
        assert_eq!(
            split_account("CORP\\joiner", "corp.example.com"),
            ("CORP".into(), "joiner".into())
        );
        assert_eq!(
            split_account("joiner@corp.example.com", "x"),
            ("corp.example.com".into(), "joiner".into())
        );
        assert_eq!(
            split_account("joiner", "corp.example.com"),
            ("corp.example.com".into(), "joiner".into())
        );
    }

    #[test]
    fn an_offline_join_carries_its_blob_and_the_specialize_commands_that_use_then_remove_it() {
        let profile = ProvisioningProfile {
            join: Some(join(None, false, true)),
            ..Default::default()
        };
        let blob = "ARAIAMzMzMz…"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>();
        let p = resolve(
            "ns",
            Some(&profile),
            &site(),
            &secrets(&[("odj", "blob", &blob)]),
        )
        .unwrap();
        assert_eq!(p.join, JoinView::Offline);
        // The blob is passed on byte for byte: djoin wrote it as UTF-16.
        assert_eq!(p.offline_join_blob.as_deref(), Some(blob.as_slice()));
        assert!(p.holds_secret());
        assert!(
            p.specialize_commands[0]
                .command_line
                .contains("/requestODJ")
        );
        assert!(p.specialize_commands[1].command_line.contains("del /f /q"));
    }

    #[test]
    fn each_missing_or_bad_secret_says_which_and_what_to_do() {
        let profile = ProvisioningProfile {
            administrator_password_secret_ref: Some(key("admin", "password")),
            ..Default::default()
        };
        let e = resolve("ns", Some(&profile), &site(), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e,
            ProvisioningError::SecretMissing {
                namespace: "ns".into(),
                name: "admin".into()
            }
        );
        assert!(e.to_string().contains("create it"), "{e}");
        let e = resolve(
            "ns",
            Some(&profile),
            &site(),
            &secrets(&[("admin", "pw", b"x")]),
        )
        .unwrap_err();
        assert!(matches!(e, ProvisioningError::KeyMissing { ref key, .. } if key == "password"));
        for bad in [&b""[..], b"\n", b"\xff\xfe"] {
            let e = resolve(
                "ns",
                Some(&profile),
                &site(),
                &secrets(&[("admin", "password", bad)]),
            )
            .unwrap_err();
            assert!(
                matches!(e, ProvisioningError::NotText { .. }),
                "{bad:?}: {e}"
            );
        }
        let offline = ProvisioningProfile {
            join: Some(join(None, false, true)),
            ..Default::default()
        };
        for bad in [Vec::new(), vec![b'x'; MAX_BLOB + 1]] {
            let e = resolve(
                "ns",
                Some(&offline),
                &site(),
                &secrets(&[("odj", "blob", &bad)]),
            )
            .unwrap_err();
            assert!(matches!(e, ProvisioningError::BadBlob { .. }), "{e}");
        }
    }

    #[test]
    fn passwords_take_unattends_obscured_form() {
        // "P@ss" + "AdministratorPassword" as UTF-16LE, base64: what Windows SIM writes.
        assert_eq!(
            obscure_password("P@ss", "AdministratorPassword"),
            "UABAAHMAcwBBAGQAbQBpAG4AaQBzAHQAcgBhAHQAbwByAFAAYQBzAHMAdwBvAHIAZAA="
        );
    }
}
