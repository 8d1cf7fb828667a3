//! A policy's provisioning profile made concrete for one machine's first start: the site's
//! defaults filled in, the Secrets' values read, and whether the result holds a secret (then
//! the boot service serves it only over HTTPS).
//!
//! [`secrets_needed`] and [`resolve`] are pure; the boot service reads the Secrets they name
//! and hands them back in.

use std::collections::BTreeMap;

use recast_crds::policy::{Join, ProvisioningProfile, SecretKeyRef};
use serde::Serialize;

use crate::store::SecretData;

/// The Secrets of the policy's namespace a profile reads for one machine, by name, each with
/// its keys.
pub fn secrets_needed(
    profile: &ProvisioningProfile,
    computer_name: &str,
) -> BTreeMap<String, Vec<String>> {
    profile.secret_keys(computer_name)
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
    /// Joined in specialize from this machine's offline join blob (`Identification/
    /// Provisioning/AccountData`: the base64 text djoin saved).
    Offline {
        account_data: String,
    },
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
        "Secret {namespace}/{name} has no offline domain join blob for this machine (key {key:?}, its computer name); provision it with djoin /provision /domain DOMAIN /machine {key} /savefile FILE and add the file under that key"
    )]
    NoBlob {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "Secret {namespace}/{name} key {key:?} is not an offline domain join blob (djoin's saved file: base64 text, UTF-16 or UTF-8, at most 64 KiB); save it again with djoin /provision ... /savefile"
    )]
    BadBlob {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "the policy's provisioning.{field} holds a line break or another control character, which an answer file cannot carry; keep it on one line"
    )]
    ControlCharacter { field: &'static str },
}

/// The largest offline domain join file accepted (djoin writes a few KiB).
const MAX_BLOB: usize = 64 * 1024;

/// The profile for one machine (`computer_name` picks its offline join blob): `secrets` holds
/// the Secrets [`secrets_needed`] named that exist.
pub fn resolve(
    namespace: &str,
    computer_name: &str,
    profile: Option<&ProvisioningProfile>,
    site: &SiteDefaults,
    secrets: &BTreeMap<String, SecretData>,
) -> Result<Provisioning, ProvisioningError> {
    let empty = ProvisioningProfile::default();
    let profile = profile.unwrap_or(&empty);
    check_text(profile)?;
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
            Ok(s) if !s.is_empty() && !s.chars().any(char::is_control) => Ok(s.to_string()),
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
            let [username_key, password_key] = recast_crds::policy::DOMAIN_CREDENTIAL_KEYS;
            let (user_domain, username) = split_account(&text(&creds(username_key))?, &d.name);
            JoinView::Domain {
                name: d.name.clone(),
                ou: d.organizational_unit.clone(),
                user_domain,
                username,
                password: text(&creds(password_key))?,
            }
        }
        Some(Join {
            offline_domain_join: Some(o),
            ..
        }) => {
            let r = SecretKeyRef {
                name: o.blobs_secret_ref.name.clone(),
                key: computer_name.to_string(),
            };
            let blob = raw(&r).map_err(|e| match e {
                ProvisioningError::KeyMissing {
                    namespace,
                    name,
                    key,
                } => ProvisioningError::NoBlob {
                    namespace,
                    name,
                    key,
                },
                other => other,
            })?;
            let account_data = blob_text(blob).ok_or_else(|| ProvisioningError::BadBlob {
                namespace: namespace.into(),
                name: r.name.clone(),
                key: r.key.clone(),
            })?;
            JoinView::Offline { account_data }
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
    })
}

/// Whether the profile's own text can go into an answer file (admission refuses control
/// characters too; this holds for objects written before that rule).
fn check_text(profile: &ProvisioningProfile) -> Result<(), ProvisioningError> {
    let bad = |s: &str| s.chars().any(char::is_control);
    for c in &profile.first_logon_commands {
        if bad(&c.command_line) || c.description.as_deref().is_some_and(bad) {
            return Err(ProvisioningError::ControlCharacter {
                field: "firstLogonCommands",
            });
        }
    }
    if let Some(d) = profile.join.as_ref().and_then(|j| j.domain.as_ref())
        && (bad(&d.name) || d.organizational_unit.as_deref().is_some_and(bad))
    {
        return Err(ProvisioningError::ControlCharacter {
            field: "join.domain",
        });
    }
    Ok(())
}

/// djoin's saved file as the base64 text AccountData takes: UTF-16LE (what /savefile writes,
/// with or without a byte-order mark) or UTF-8 (/printblob's output), trailing NULs and
/// whitespace dropped; None when it is not base64 text of a sane size.
fn blob_text(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() || bytes.len() > MAX_BLOB {
        return None;
    }
    let text = if bytes.len() >= 2
        && bytes.len().is_multiple_of(2)
        && (bytes[..2] == [0xff, 0xfe] || bytes[1] == 0)
    {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).ok()?
    } else {
        String::from_utf8(bytes.to_vec()).ok()?
    };
    let text = text
        .trim_start_matches('\u{feff}')
        .trim_end_matches(|c: char| c == '\0' || c.is_whitespace());
    let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    (!text.is_empty() && text.chars().all(base64)).then(|| text.to_string())
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
                blobs_secret_ref: SecretRef { name: "odj".into() },
            }),
        }
    }

    #[test]
    fn no_profile_is_a_workgroup_machine_with_the_sites_settings_and_no_secret() {
        let p = resolve("ns", "KIOSK-01", None, &site(), &BTreeMap::new()).unwrap();
        assert_eq!(
            p.join,
            JoinView::Workgroup {
                name: "WORKGROUP".into()
            }
        );
        assert_eq!((p.locale.as_str(), p.time_zone.as_str()), ("en-US", "UTC"));
        assert!(!p.holds_secret());
        assert!(secrets_needed(&ProvisioningProfile::default(), "KIOSK-01").is_empty());
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
        let needed = secrets_needed(&profile, "KIOSK-01");
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
        let p = resolve("ns", "KIOSK-01", Some(&profile), &site(), &s).unwrap();
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
    fn an_offline_join_takes_the_machines_own_blob_as_djoin_saved_it() {
        let profile = ProvisioningProfile {
            join: Some(join(None, false, true)),
            ..Default::default()
        };
        let utf16 = |t: &str, bom: bool| {
            let mut b = if bom { vec![0xff, 0xfe] } else { vec![] };
            b.extend(t.encode_utf16().flat_map(u16::to_le_bytes));
            b
        };
        // /savefile writes UTF-16LE (with a BOM, and a trailing NUL); /printblob prints
        // UTF-8; both give the same AccountData.
        for blob in [
            utf16("ARAIAMzMzMzIAQ==\0", true),
            utf16("ARAIAMzMzMzIAQ==", false),
            b"ARAIAMzMzMzIAQ==\r\n".to_vec(),
        ] {
            let p = resolve(
                "ns",
                "KIOSK-01",
                Some(&profile),
                &site(),
                &secrets(&[("odj", "KIOSK-02", b"QUJD"), ("odj", "KIOSK-01", &blob)]),
            )
            .unwrap();
            assert_eq!(
                p.join,
                JoinView::Offline {
                    account_data: "ARAIAMzMzMzIAQ==".into()
                },
                "{blob:?}"
            );
            assert!(p.holds_secret());
        }
        // Another machine's blob is never used: a machine without its own is refused.
        let e = resolve(
            "ns",
            "KIOSK-03",
            Some(&profile),
            &site(),
            &secrets(&[("odj", "KIOSK-01", b"QUJD")]),
        )
        .unwrap_err();
        assert!(matches!(e, ProvisioningError::NoBlob { ref key, .. } if key == "KIOSK-03"));
        assert!(e.to_string().contains("/machine KIOSK-03"), "{e}");
    }

    #[test]
    fn each_missing_or_bad_secret_says_which_and_what_to_do() {
        let profile = ProvisioningProfile {
            administrator_password_secret_ref: Some(key("admin", "password")),
            ..Default::default()
        };
        let e = resolve("ns", "KIOSK-01", Some(&profile), &site(), &BTreeMap::new()).unwrap_err();
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
            "KIOSK-01",
            Some(&profile),
            &site(),
            &secrets(&[("admin", "pw", b"x")]),
        )
        .unwrap_err();
        assert!(matches!(e, ProvisioningError::KeyMissing { ref key, .. } if key == "password"));
        for bad in [&b""[..], b"\n", b"\xff\xfe", b"pass\x07word"] {
            let e = resolve(
                "ns",
                "KIOSK-01",
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
        for bad in [
            Vec::new(),
            vec![b'x'; MAX_BLOB + 1],
            b"not <base64>".to_vec(),
            vec![0xff, 0xfe, 0x00, 0xd8],
        ] {
            let e = resolve(
                "ns",
                "KIOSK-01",
                Some(&offline),
                &site(),
                &secrets(&[("odj", "KIOSK-01", &bad)]),
            )
            .unwrap_err();
            assert!(matches!(e, ProvisioningError::BadBlob { .. }), "{e}");
        }
    }

    #[test]
    fn profile_text_an_answer_file_cannot_carry_is_refused() {
        let profile = ProvisioningProfile {
            first_logon_commands: vec![FirstLogonCommand {
                command_line: "cmd /c echo a\r\nformat c:".into(),
                description: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            resolve("ns", "KIOSK-01", Some(&profile), &site(), &BTreeMap::new()),
            Err(ProvisioningError::ControlCharacter {
                field: "firstLogonCommands"
            })
        );
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
