//! Boot arming, as the store keeps it: the boot intent the controller writes for an attempt
//! try, what recast knows about a MAC address, and the store role the boot service reads
//! (`BootIntents`). The boot service's decisions on them are in boot/intent.rs.

use std::future::Future;

use jiff::Timestamp;
use recast_core::lifecycle::Action;
use recast_core::time;
use recast_crds::Endpoint;
use recast_crds::endpoint::{BootChain, BootMode, BootServer};
use serde::{Deserialize, Serialize};

use super::{BackendError, Key};

/// An armed network boot for one attempt try of one endpoint. The controller writes it (both
/// backends) when the lifecycle arms the boot and deletes it when the attempt moves on; the boot
/// service only reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootIntent {
    pub namespace: String,
    pub endpoint: String,
    /// Lower-case, colon-separated.
    pub mac_addresses: Vec<String>,
    pub attempt_id: String,
    pub try_number: u32,
    /// GoldenImage name.
    pub image: String,
    /// sha256 of the WIM the imaging environment must apply; never served without one.
    pub image_digest: Option<String>,
    /// "uefi" or "bios".
    pub boot_mode: String,
    pub armed_at: String,
}

/// What recast knows about a MAC address that asks to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// An Endpoint lists this MAC; `wds` when it is handed to the site's WDS server; `chain`
    /// and `mode` are its spec's (see [`Known::chain`]).
    Endpoint {
        namespace: String,
        name: String,
        wds: bool,
        chain: BootChain,
        mode: BootMode,
    },
    /// Two or more Endpoints list this MAC ("namespace/name" of each, sorted). Admission
    /// refuses that on both backends; if it happens anyway (an object written before the
    /// check, a race between two creates, a webhook that was down) the MAC boots nothing.
    Ambiguous {
        owners: Vec<String>,
    },
    Unknown,
}

/// One live Endpoint that lists a MAC, with what the boot service needs of its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    /// spec.bootServer is wds.
    pub wds: bool,
    /// spec.bootChain, as written (`Auto` when unset).
    pub chain: BootChain,
    pub mode: BootMode,
}

impl Owner {
    pub fn of(ep: &Endpoint) -> Owner {
        Owner {
            namespace: Key::of(ep).namespace,
            name: Key::of(ep).name,
            wds: ep.spec.boot_server == BootServer::Wds,
            chain: ep.spec.boot_chain,
            mode: ep.spec.boot_mode,
        }
    }

    /// From the spec's fields as stored JSON gives them (absent: the defaults). A value this
    /// version does not know (a newer writer) reads as the default, never as an error that
    /// would stop the machine from booting at all.
    pub fn from_fields(
        namespace: String,
        name: String,
        boot_server: Option<&str>,
        boot_chain: Option<&str>,
        boot_mode: Option<&str>,
    ) -> Owner {
        fn parse<T: serde::de::DeserializeOwned>(v: Option<&str>) -> Option<T> {
            serde_json::from_value(serde_json::Value::String(v?.into())).ok()
        }
        let mode: BootMode = parse(boot_mode).unwrap_or(BootMode::Uefi);
        let chain: BootChain = parse(boot_chain).unwrap_or_default();
        Owner {
            namespace,
            name,
            wds: boot_server == Some("wds"),
            chain,
            mode,
        }
    }
}

impl Known {
    /// What recast knows about a MAC from the live Endpoints that list it: nobody, exactly
    /// one, or several (never "the first one").
    pub fn from_owners(mut owners: Vec<Owner>) -> Known {
        owners.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        owners.dedup_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name));
        match owners.len() {
            0 => Known::Unknown,
            1 => {
                let o = owners.remove(0);
                Known::Endpoint {
                    namespace: o.namespace,
                    name: o.name,
                    wds: o.wds,
                    chain: o.chain,
                    mode: o.mode,
                }
            }
            _ => Known::Ambiguous {
                owners: owners
                    .into_iter()
                    .map(|o| format!("{}/{}", o.namespace, o.name))
                    .collect(),
            },
        }
    }

    /// The boot chain to offer (never `Auto`): the endpoint's, resolved by its boot mode and
    /// whether the imaging environment is WinPE; iPXE for a MAC nobody (or more than one
    /// Endpoint) owns, as before there was a choice.
    pub fn chain(&self, winpe: bool) -> BootChain {
        match self {
            Known::Endpoint { chain, mode, .. } => chain.resolve(*mode, winpe),
            Known::Ambiguous { .. } | Known::Unknown => BootChain::Ipxe,
        }
    }
}

/// One MAC an Endpoint lists that another Endpoint already lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacConflict {
    /// Normalised.
    pub mac: String,
    /// "namespace/name" of the Endpoint that already lists it.
    pub owner: String,
}

impl std::fmt::Display for MacConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MAC address {} already belongs to Endpoint {}",
            self.mac, self.owner
        )
    }
}

/// The MACs of `candidate` (namespace, name, MACs) that another Endpoint in `others` already
/// lists; the candidate itself (same namespace and name) is never a conflict. MACs compare
/// normalised, so `52-54-00-AB-CD-01` and `52:54:00:ab:cd:01` are the same machine.
pub fn mac_conflicts<'a>(
    candidate: (&str, &str, &[String]),
    others: impl IntoIterator<Item = (&'a str, &'a str, &'a [String])>,
) -> Vec<MacConflict> {
    let (ns, name, macs) = candidate;
    let norm = |m: &str| normalize_mac(m).unwrap_or_else(|| m.trim().to_ascii_lowercase());
    let wanted: std::collections::BTreeSet<String> = macs.iter().map(|m| norm(m)).collect();
    let mut out: Vec<MacConflict> = Vec::new();
    for (other_ns, other_name, other_macs) in others {
        if other_ns == ns && other_name == name {
            continue;
        }
        for m in other_macs {
            let m = norm(m);
            if wanted.contains(&m) {
                out.push(MacConflict {
                    mac: m,
                    owner: format!("{other_ns}/{other_name}"),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.mac, &a.owner).cmp(&(&b.mac, &b.owner)));
    out.dedup();
    out
}

/// Normalises a MAC address to lower-case colon-separated form; None when it is not one.
pub fn normalize_mac(raw: &str) -> Option<String> {
    let hex: String = raw
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    Some(
        lower
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":"),
    )
}

impl BootIntent {
    /// The endpoint this intent arms.
    pub fn key(&self) -> Key {
        Key {
            namespace: self.namespace.clone(),
            name: self.endpoint.clone(),
        }
    }

    /// The intent an ArmBoot action asks for (built once here, written by either backend).
    pub fn for_action(ep: &Endpoint, action: &Action, now: Timestamp) -> BootIntent {
        let key = Key::of(ep);
        let (attempt_id, try_number, image, image_digest, macs, boot_mode) = match action {
            Action::ArmBoot {
                attempt_id,
                try_number,
                image,
                image_digest,
                mac_addresses,
                boot_mode,
            } => (
                attempt_id.clone(),
                *try_number,
                image.clone(),
                image_digest.clone(),
                mac_addresses.clone(),
                format!("{boot_mode:?}").to_lowercase(),
            ),
            // Only ArmBoot arms anything; other actions give an intent that is never served
            // (no digest).
            other => (
                other.attempt_id().to_string(),
                0,
                String::new(),
                None,
                Vec::new(),
                String::new(),
            ),
        };
        BootIntent {
            namespace: key.namespace,
            endpoint: key.name,
            mac_addresses: macs
                .iter()
                .map(|m| normalize_mac(m).unwrap_or_else(|| m.to_ascii_lowercase()))
                .collect(),
            attempt_id,
            try_number,
            image,
            image_digest,
            boot_mode,
            armed_at: time::format(now),
        }
    }
}

/// What the boot service reads from the store; both backends implement it.
pub trait BootIntents: Send + Sync + 'static {
    /// Who owns this MAC (normalised) and what is armed for it.
    fn boot_lookup(
        &self,
        mac: &str,
    ) -> impl Future<Output = Result<(Known, Option<BootIntent>), BackendError>> + Send;
    /// False while the store's view of MACs is still loading (the kube backend's watch-fed
    /// index before its first listing); the boot service reports it on /readyz.
    fn boot_lookups_ready(&self) -> bool {
        true
    }
    /// The intent armed for an endpoint, if any.
    fn boot_intent_of(
        &self,
        key: &Key,
    ) -> impl Future<Output = Result<Option<BootIntent>, BackendError>> + Send;
    /// Records a MAC address nobody manages that asked to boot (UnknownMacPolicy::Discover).
    fn record_discovered(
        &self,
        mac: &str,
        detail: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}
