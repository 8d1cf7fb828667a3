//! The Redfish driver of `PowerControl`: arm a one-time network boot through the endpoint's
//! BMC, check that it took, then power-cycle. Credentials come from the Secret the Endpoint
//! names, through `SecretSource` (the embedded store or the Kubernetes API).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use recast_bmc::{
    Bmc, BootMode, ClientConfig, NetworkBoot, OverrideCheck, PowerAction, PowerState, RedfishError,
    TlsVerify,
};
use recast_crds::Endpoint;
use recast_crds::endpoint::BmcSpec;

use super::PowerControl;
use crate::store::embedded::EmbeddedStore;
use recast_core::lifecycle::ActionError;

pub use crate::store::SecretData;

#[derive(Debug, thiserror::Error)]
#[error("cannot read Secret {namespace}/{name}: {message}")]
pub struct SecretLookupError {
    pub namespace: String,
    pub name: String,
    pub message: String,
    /// True when a person must act (RBAC forbids reading it), false for a store or API hiccup.
    pub permanent: bool,
}

/// Where BMC credentials and CA bundles come from.
pub trait SecretSource: Send + Sync + 'static {
    /// The Secret's data, or None when it does not exist.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<SecretData>, SecretLookupError>> + Send;
}

/// An armed try's Secrets read by this process itself, through its own [`SecretSource`].
pub struct LocalTrySecrets<S>(pub S);

impl<S: SecretSource> crate::store::TrySecrets for LocalTrySecrets<S> {
    fn try_secrets<'a>(
        &'a self,
        intent: &'a crate::store::BootIntent,
        names: &'a [String],
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = Result<crate::store::SecretMap, crate::store::SecretsError>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let mut out = crate::store::SecretMap::new();
            for name in names {
                match self.0.secret(&intent.namespace, name).await {
                    Ok(Some(data)) => {
                        out.insert(name.clone(), data);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(crate::store::SecretsError {
                            permanent: e.permanent,
                            message: e.to_string(),
                        });
                    }
                }
            }
            Ok(out)
        })
    }
}

/// Secrets kept in the embedded store (`recastctl apply -f` of a `v1 Secret`).
pub struct EmbeddedSecrets(pub Arc<EmbeddedStore>);

impl SecretSource for EmbeddedSecrets {
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, SecretLookupError> {
        self.0
            .secret(namespace, name)
            .map_err(|e| SecretLookupError {
                namespace: namespace.into(),
                name: name.into(),
                message: e.to_string(),
                permanent: false,
            })
    }
}

/// Secrets already read (by a CLI that fetched them through its own backend).
#[derive(Default)]
pub struct StaticSecrets(pub BTreeMap<(String, String), SecretData>);

impl SecretSource for StaticSecrets {
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, SecretLookupError> {
        Ok(self
            .0
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
}

/// Secrets read through the Kubernetes API.
pub struct KubeSecrets(pub kube::Client);

impl SecretSource for KubeSecrets {
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, SecretLookupError> {
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(self.0.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(secret)) => Ok(Some(
                secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            )),
            Ok(None) => Ok(None),
            Err(e) => {
                let permanent = matches!(&e, kube::Error::Api(s) if s.code == 401 || s.code == 403);
                Err(SecretLookupError {
                    namespace: namespace.into(),
                    name: name.into(),
                    message: if permanent {
                        format!("{e}; grant the operator's service account get on secrets")
                    } else {
                        e.to_string()
                    },
                    permanent,
                })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BmcSetupError {
    #[error(
        "Secret {namespace}/{name} named by spec.bmc.{field} does not exist; create it (keys: {keys})"
    )]
    MissingSecret {
        namespace: String,
        name: String,
        field: &'static str,
        keys: &'static str,
    },
    #[error("Secret {namespace}/{name} has no {key:?} key; add it")]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{name} key {key:?} is not UTF-8 text")]
    NotText {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error(transparent)]
    Lookup(#[from] SecretLookupError),
}

impl BmcSetupError {
    pub fn is_permanent(&self) -> bool {
        match self {
            BmcSetupError::Lookup(e) => e.permanent,
            _ => true,
        }
    }
}

/// Timings and choices for talking to BMCs.
#[derive(Clone, Debug)]
pub struct RedfishTuning {
    pub network_boot: NetworkBoot,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long the driver waits to see the new power state. Short on purpose: the embedded
    /// controller runs actions one at a time, and the boot service, not PowerState, confirms
    /// that the machine booted from the network.
    pub power_settle: Duration,
    pub poll_interval: Duration,
    pub retries: u32,
}

impl Default for RedfishTuning {
    fn default() -> Self {
        RedfishTuning {
            // PXE is what every BMC and NIC supports and what recast's boot service answers;
            // UEFI HTTP boot needs a URI the BMC must accept, which not all do.
            network_boot: NetworkBoot::Pxe,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            power_settle: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            retries: 2,
        }
    }
}

fn secret_text(
    data: &SecretData,
    namespace: &str,
    name: &str,
    key: &'static str,
) -> Result<String, BmcSetupError> {
    let bytes = data.get(key).ok_or_else(|| BmcSetupError::MissingKey {
        namespace: namespace.into(),
        name: name.into(),
        key,
    })?;
    let text = std::str::from_utf8(bytes).map_err(|_| BmcSetupError::NotText {
        namespace: namespace.into(),
        name: name.into(),
        key,
    })?;
    // Secrets made with `echo` often carry a trailing newline no BMC password has.
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// The client configuration for an endpoint's BMC, credentials and CA bundle resolved.
pub async fn client_config<S: SecretSource>(
    namespace: &str,
    bmc: &BmcSpec,
    secrets: &S,
    tuning: &RedfishTuning,
) -> Result<ClientConfig, BmcSetupError> {
    let cred_name = &bmc.credentials_secret_ref.name;
    let data = secrets.secret(namespace, cred_name).await?.ok_or_else(|| {
        BmcSetupError::MissingSecret {
            namespace: namespace.into(),
            name: cred_name.clone(),
            field: "credentialsSecretRef",
            keys: "username, password",
        }
    })?;
    let username = secret_text(&data, namespace, cred_name, "username")?;
    let password = secret_text(&data, namespace, cred_name, "password")?;
    let tls = if bmc.insecure_skip_tls_verify {
        TlsVerify::Insecure
    } else if let Some(ca) = &bmc.ca_bundle_secret_ref {
        let data = secrets.secret(namespace, &ca.name).await?.ok_or_else(|| {
            BmcSetupError::MissingSecret {
                namespace: namespace.into(),
                name: ca.name.clone(),
                field: "caBundleSecretRef",
                keys: "ca.crt",
            }
        })?;
        let pem = data
            .get("ca.crt")
            .ok_or_else(|| BmcSetupError::MissingKey {
                namespace: namespace.into(),
                name: ca.name.clone(),
                key: "ca.crt",
            })?;
        TlsVerify::CaBundle(pem.clone())
    } else {
        TlsVerify::SystemRoots
    };
    let mut cfg = ClientConfig::new(bmc.address.clone()).with_credentials(&username, &password);
    cfg.tls = tls;
    cfg.request_timeout = tuning.request_timeout;
    cfg.connect_timeout = tuning.connect_timeout;
    cfg.power_settle = tuning.power_settle;
    cfg.poll_interval = tuning.poll_interval;
    cfg.retries = tuning.retries;
    Ok(cfg)
}

/// What to do when an earlier run of the same (attempt, try) may already have cycled the
/// machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Safe to arm and cycle (again).
    Cycle,
    /// Cycling again could interrupt a machine that is already imaging.
    LeaveAlone(String),
}

/// Decides from what the BMC shows. A one-time override is consumed by the boot it causes,
/// so an override still armed on a running machine means no cycle happened yet; a consumed
/// one means it did (or the earlier run stopped before arming: then the try timeout starts a
/// new try, which is cheaper than interrupting an imaging machine).
pub fn resume_decision(power: Option<&PowerState>, check: &OverrideCheck) -> Resume {
    match (power, check) {
        (Some(PowerState::Off), _) => Resume::Cycle,
        (Some(PowerState::On), OverrideCheck::Armed) => Resume::Cycle,
        (Some(PowerState::On), OverrideCheck::NotArmed(why)) => Resume::LeaveAlone(format!(
            "the machine is on and the one-time network boot is no longer armed ({why}): it has booted since"
        )),
        (Some(PowerState::On), OverrideCheck::ArmedContinuous) => Resume::LeaveAlone(
            "the BMC reports the override as Continuous, so whether the machine already booted from it cannot be told; the try timeout starts a new try if it did not".into(),
        ),
        (other, _) => Resume::LeaveAlone(format!(
            "the power state is {} (changing or unknown)",
            other.map(|p| p.to_string()).unwrap_or_else(|| "not reported".into())
        )),
    }
}

pub fn action_error(address: &str, e: &RedfishError) -> ActionError {
    ActionError {
        permanent: e.is_permanent(),
        message: format!("BMC {address}: {e}"),
    }
}

fn boot_mode(ep: &Endpoint) -> BootMode {
    match ep.spec.boot_mode {
        recast_crds::endpoint::BootMode::Uefi => BootMode::Uefi,
        recast_crds::endpoint::BootMode::Bios => BootMode::Legacy,
    }
}

/// Power control through each endpoint's Redfish BMC.
pub struct RedfishPower<S: SecretSource> {
    secrets: S,
    tuning: RedfishTuning,
}

impl<S: SecretSource> RedfishPower<S> {
    pub fn new(secrets: S, tuning: RedfishTuning) -> Self {
        RedfishPower { secrets, tuning }
    }

    /// Connects to the endpoint's BMC (None when it has no spec.bmc).
    pub async fn connect(&self, ep: &Endpoint) -> Result<Option<Bmc>, ActionError> {
        let Some(spec) = &ep.spec.bmc else {
            return Ok(None);
        };
        let ns = recast_crds::namespace_of(&ep.metadata);
        let cfg = client_config(ns, spec, &self.secrets, &self.tuning)
            .await
            .map_err(|e| ActionError {
                permanent: e.is_permanent(),
                message: e.to_string(),
            })?;
        Bmc::connect(cfg, spec.system_id.as_deref())
            .await
            .map(Some)
            .map_err(|e| action_error(&spec.address, &e))
    }

    async fn cycle(
        &self,
        bmc: &Bmc,
        ep: &Endpoint,
        maybe_done: bool,
    ) -> Result<String, RedfishError> {
        let target = self.tuning.network_boot;
        let mode = boot_mode(ep);
        if maybe_done {
            let sys = bmc.system().await?;
            let check = recast_bmc::model::check_override(target, Some(mode), sys.boot.as_ref());
            if let Resume::LeaveAlone(why) = resume_decision(sys.power_state.as_ref(), &check) {
                return Ok(format!("not cycled again after an interrupted run: {why}"));
            }
        }
        let armed = bmc.arm_network_boot(target, Some(mode)).await?;
        let note = match armed.check {
            OverrideCheck::ArmedContinuous => {
                " (the BMC reports it as Continuous; the boot service sends the machine to its disk once imaging is done)"
            }
            _ => "",
        };
        let (before, reset_type) = bmc.reset(PowerAction::Cycle).await?;
        let after = match bmc.wait_power(&PowerAction::Cycle.expected_state()).await {
            Ok(state) => state.to_string(),
            // The BMC accepted the reset; a machine slow to report On is no reason to fail the
            // action (and retry a reset): the try timeout catches a machine that never boots.
            Err(RedfishError::NotApplied { detail, .. }) => format!("not yet On ({detail})"),
            Err(e) => return Err(e),
        };
        Ok(format!(
            "one-time {} boot ({}) set{note}; power {} via {reset_type} → {after}",
            target.as_redfish(),
            mode.as_redfish(),
            before
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into()),
        ))
    }
}

impl<S: SecretSource> PowerControl for RedfishPower<S> {
    async fn power_cycle(
        &self,
        ep: &Endpoint,
        attempt_id: &str,
        try_number: u32,
        maybe_done: bool,
    ) -> Result<String, ActionError> {
        let name = ep.metadata.name.as_deref().unwrap_or_default();
        let Some(bmc) = self.connect(ep).await? else {
            return Ok(format!(
                "no BMC configured: restart {name} by hand so that it boots from the network"
            ));
        };
        let address = ep
            .spec
            .bmc
            .as_ref()
            .map(|b| b.address.as_str())
            .unwrap_or_default();
        tracing::info!(
            endpoint = name,
            attempt_id,
            try_number,
            maybe_done,
            bmc = address,
            "power-cycling through the BMC"
        );
        let result = self.cycle(&bmc, ep, maybe_done).await;
        if let Err(e) = bmc.logout().await {
            tracing::debug!(endpoint = name, error = %e, "BMC logout failed");
        }
        result.map_err(|e| action_error(address, &e))
    }

    async fn os_crashes(
        &self,
        ep: &Endpoint,
    ) -> Result<Vec<recast_core::derive::BmcCrash>, ActionError> {
        let Some(bmc) = self.connect(ep).await? else {
            return Ok(Vec::new());
        };
        let address = ep
            .spec
            .bmc
            .as_ref()
            .map(|b| b.address.clone())
            .unwrap_or_default();
        let log = bmc.event_log().await;
        if let Err(e) = bmc.logout().await {
            tracing::debug!(error = %e, "BMC logout failed");
        }
        let log = log.map_err(|e| action_error(&address, &e))?;
        Ok(recast_bmc::events::crash_evidence(&log.entries)
            .into_iter()
            .map(|c| recast_core::derive::BmcCrash {
                at: c.created.as_deref().and_then(recast_core::time::parse),
                bugcheck: c.bugcheck,
                source: format!("{} entry {}", c.service, c.entry_id),
                message: c.message,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_decisions() {
        let on = PowerState::On;
        let off = PowerState::Off;
        let not_armed = OverrideCheck::NotArmed("BootSourceOverrideEnabled is Disabled".into());
        assert_eq!(resume_decision(Some(&off), &not_armed), Resume::Cycle);
        assert_eq!(
            resume_decision(Some(&off), &OverrideCheck::Armed),
            Resume::Cycle
        );
        assert_eq!(
            resume_decision(Some(&on), &OverrideCheck::Armed),
            Resume::Cycle
        );
        assert!(matches!(
            resume_decision(Some(&on), &not_armed),
            Resume::LeaveAlone(_)
        ));
        assert!(matches!(
            resume_decision(Some(&on), &OverrideCheck::ArmedContinuous),
            Resume::LeaveAlone(_)
        ));
        assert!(matches!(
            resume_decision(Some(&PowerState::PoweringOn), &OverrideCheck::Armed),
            Resume::LeaveAlone(_)
        ));
        assert!(matches!(
            resume_decision(None, &OverrideCheck::Armed),
            Resume::LeaveAlone(_)
        ));
    }

    struct MapSecrets(BTreeMap<(String, String), SecretData>);

    impl SecretSource for MapSecrets {
        async fn secret(
            &self,
            ns: &str,
            name: &str,
        ) -> Result<Option<SecretData>, SecretLookupError> {
            Ok(self.0.get(&(ns.to_string(), name.to_string())).cloned())
        }
    }

    fn spec(address: &str) -> BmcSpec {
        serde_json::from_value(serde_json::json!({
            "address": address, "credentialsSecretRef": {"name": "bmc-creds"}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn credentials_come_from_the_secret() {
        let mut data = SecretData::new();
        data.insert("username".into(), b"root\n".to_vec());
        data.insert("password".into(), b"pw".to_vec());
        let secrets = MapSecrets([(("site-a".into(), "bmc-creds".into()), data.clone())].into());
        let cfg = client_config(
            "site-a",
            &spec("https://10.0.40.21"),
            &secrets,
            &RedfishTuning::default(),
        )
        .await
        .unwrap();
        let creds = cfg.credentials.unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("root", "pw")
        );
        assert!(
            !format!("{creds:?}").contains("pw\""),
            "Debug never shows the password"
        );
        assert!(matches!(cfg.tls, TlsVerify::SystemRoots));

        let err = client_config(
            "other-ns",
            &spec("https://10.0.40.21"),
            &secrets,
            &RedfishTuning::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BmcSetupError::MissingSecret { .. }), "{err}");
        assert!(err.is_permanent());
        assert!(err.to_string().contains("username, password"));

        data.remove("password");
        let secrets = MapSecrets([(("site-a".into(), "bmc-creds".into()), data)].into());
        let err = client_config(
            "site-a",
            &spec("https://10.0.40.21"),
            &secrets,
            &RedfishTuning::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                BmcSetupError::MissingKey {
                    key: "password",
                    ..
                }
            ),
            "{err}"
        );

        let mut with_ca = spec("https://10.0.40.21");
        with_ca.ca_bundle_secret_ref = Some(recast_crds::common::SecretRef {
            name: "bmc-ca".into(),
        });
        let mut creds = SecretData::new();
        creds.insert("username".into(), b"u".to_vec());
        creds.insert("password".into(), b"p".to_vec());
        let secrets = MapSecrets([(("ns".into(), "bmc-creds".into()), creds)].into());
        let err = client_config("ns", &with_ca, &secrets, &RedfishTuning::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                BmcSetupError::MissingSecret {
                    field: "caBundleSecretRef",
                    ..
                }
            ),
            "{err}"
        );
    }
}
