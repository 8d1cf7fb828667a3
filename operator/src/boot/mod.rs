//! The boot service: proxyDHCP/DHCP, TFTP and HTTP boot. It decides per machine — the local
//! disk unless an attempt is armed, the imaging environment when one is — from the boot intents
//! the controller writes, and reports what it saw back to the controller as inputs.

pub mod artifacts;
pub mod dhcp;
pub mod forward;
pub mod http;
pub mod index;
pub mod intent;
pub mod listener;
pub mod ratelimit;
pub mod render;
pub mod service;
pub mod tftp;
pub mod token;

use std::future::Future;

use jiff::Timestamp;
use recast_crds::Endpoint;

pub use intent::{BootChoice, BootIntent, Known, UnknownMacPolicy};

use crate::controller::{BackendError, Key};
use recast_core::lifecycle::Action;
use recast_core::time;

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
                .map(|m| intent::normalize_mac(m).unwrap_or_else(|| m.to_ascii_lowercase()))
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
